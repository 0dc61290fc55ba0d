package rsync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"

	"onebackup/internal/backend"
	"onebackup/internal/checksum"
	"onebackup/internal/remote"
)

// Sums reads the checksum record of backup snap; nil when the backup has none (made before
// records existed, or by OpenNebula's drivers).
func (s *Store) Sums(ctx context.Context, loc backend.Location, snap string) (checksum.Sums, error) {
	dir, err := s.backupDir(loc.VMID, snap)
	if err != nil {
		return nil, err
	}
	rec := path.Join(dir, checksum.File)
	sums, err := checksum.ReadRecord(snap, rec, func(w io.Writer) error {
		_, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"cat", "--", rec}, Stdout: w}, false)
		return err
	})
	if err != nil && strings.Contains(remote.StderrOf(err), "No such file or directory") {
		return nil, nil
	}
	if err != nil && !checksum.IsCorrupt(err) {
		return nil, fmt.Errorf("cannot read %s on %s: %w", rec, s.target(), err)
	}
	return sums, err
}

// checkStored checks stored files (of any backups of loc) against their backups' records where
// they lie: sha256sum runs on the rsync host, so no byte crosses the network. It is called
// before the rsync host itself reads the files (merges for a download or a flatten, the
// single file a download cats). It returns how many files had a record.
func (s *Store) checkStored(ctx context.Context, loc backend.Location, files []backend.StoredFile) (int, error) {
	want := map[string]string{} // path -> recorded sum
	snapOf := map[string]string{}
	var paths []string
	records := map[string]checksum.Sums{}
	for _, f := range files {
		sums, ok := records[f.Snap]
		if !ok {
			var err error
			if sums, err = s.Sums(ctx, loc, f.Snap); err != nil {
				return 0, err
			}
			records[f.Snap] = sums
		}
		if sum := sums[path.Base(f.Path)]; sum != "" {
			want[f.Path], snapOf[f.Path] = sum, f.Snap
			paths = append(paths, f.Path)
		}
	}
	if len(paths) == 0 {
		return 0, nil
	}
	got, err := s.sumRemote(ctx, paths)
	if err != nil {
		if m := missingRe.FindStringSubmatch(remote.StderrOf(err)); m != nil && snapOf[m[1]] != "" {
			return 0, &checksum.CorruptError{Backup: snapOf[m[1]], File: m[1], Detail: "is recorded but missing on " + s.target().String()}
		}
		return 0, err
	}
	for _, p := range paths {
		if got[p] != want[p] {
			return 0, &checksum.CorruptError{Backup: snapOf[p], File: p,
				Detail: fmt.Sprintf("on %s does not match the checksum recorded when it was backed up (SHA-256 %.16s…, recorded %.16s…)", s.target(), got[p], want[p])}
		}
	}
	return len(paths), nil
}

// missingRe is sha256sum's complaint about a file that is not there.
var missingRe = regexp.MustCompile(`(?m)^sha256sum: (/[^:]+): No such file or directory$`)

// sumRemote runs sha256sum on the rsync host and returns the sums by path.
func (s *Store) sumRemote(ctx context.Context, paths []string) (map[string]string, error) {
	res, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: append([]string{"sha256sum", "--"}, paths...)}, false)
	if err != nil {
		return nil, fmt.Errorf("cannot compute the checksums of %d stored files on %s: %w", len(paths), s.target(), err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		sum, p, ok := strings.Cut(line, "  ")
		if ok {
			got[p] = sum
		}
	}
	return got, nil
}

// recordSums writes the checksum record of a backup directory the rsync host filled itself (a
// flatten): names are the base names of files in dir.
func (s *Store) recordSums(ctx context.Context, dir string, names []string) error {
	var paths []string
	for _, n := range names {
		paths = append(paths, path.Join(dir, n))
	}
	got, err := s.sumRemote(ctx, paths)
	if err != nil {
		return err
	}
	sums := checksum.Sums{}
	for _, n := range names {
		if sums[n] = got[path.Join(dir, n)]; sums[n] == "" {
			return fmt.Errorf("sha256sum on %s gave no checksum for %s", s.target(), path.Join(dir, n))
		}
	}
	c := remote.Cmd{Target: s.target(), Argv: []string{"tee", "--", path.Join(dir, checksum.File)}, Stdin: bytes.NewReader(sums.Format())}
	if _, err := s.rt.Run(ctx, c, true); err != nil {
		return fmt.Errorf("cannot write the checksum record of %s on %s: %w", dir, s.target(), err)
	}
	return nil
}

// VerifyBackup implements backend.Verifier: sha256sum of every recorded file, on the rsync host.
func (s *Store) VerifyBackup(ctx context.Context, loc backend.Location, snap string) (int, error) {
	dir, err := s.backupDir(loc.VMID, snap)
	if err != nil {
		return 0, err
	}
	sums, err := s.Sums(ctx, loc, snap)
	if err != nil || sums == nil {
		return 0, err
	}
	var files []backend.StoredFile
	for n := range sums {
		files = append(files, backend.StoredFile{Snap: snap, Path: path.Join(dir, n)})
	}
	return s.checkStored(ctx, loc, files)
}

// CheckRepository implements backend.Verifier: an rsync tree has no structure of its own
// beyond its files, which VerifyBackup checks.
func (s *Store) CheckRepository(context.Context, backend.Location, string) (string, error) {
	return "", nil
}
