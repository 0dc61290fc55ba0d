package restic

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/qcow2"
	"onebackup/internal/remote"
)

// chainSnapshots finds the snapshot of every chain item, in chain order (never time order), and
// checks that each belongs to the VM (tag one-<vm_id>).
func (s *Store) chainSnapshots(ctx context.Context, loc backend.Location, c chain.Chain) ([]snapshot, error) {
	all, err := s.snapshots(ctx, loc)
	if err != nil {
		return nil, err
	}
	tag := "one-" + strconv.Itoa(loc.VMID)
	out := make([]snapshot, 0, len(c))
	for _, it := range c {
		i := slices.IndexFunc(all, func(sn snapshot) bool { return strings.HasPrefix(sn.ID, it.Snap) })
		if i < 0 {
			return nil, fmt.Errorf("no snapshot %s in repository %s", it.Snap, s.cfg.Repo(loc))
		}
		if !slices.Contains(all[i].Tags, tag) {
			return nil, fmt.Errorf("snapshot %s is not a backup of VM %d", it.Snap, loc.VMID)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// diskFile is the one file of a snapshot whose name starts with disk.<idx>.
func diskFile(sn snapshot, idx string) (string, error) {
	var found []string
	for _, p := range sn.Paths {
		if strings.HasPrefix(path.Base(p), "disk."+idx+".") {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("snapshot %s holds %d files of disk %s, want 1", sn.short(), len(found), idx)
	}
	return found[0], nil
}

// ChainFiles implements backend.ChainLister.
func (s *Store) ChainFiles(ctx context.Context, u chain.URL, loc backend.Location) ([]backend.StoredFile, error) {
	snaps, err := s.chainSnapshots(ctx, loc, u.Chain)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(snaps[len(snaps)-1].Paths, u.Path) {
		return nil, fmt.Errorf("%s is not a file of backup %s", u.Path, snaps[len(snaps)-1].short())
	}
	var out []backend.StoredFile
	for _, sn := range snaps {
		f, err := diskFile(sn, u.DiskIndex())
		if err != nil {
			return nil, err
		}
		out = append(out, backend.StoredFile{Snap: sn.short(), Path: f})
	}
	return out, nil
}

// Stream implements backend.Downloader: dump the file of the last restore point.
func (s *Store) Stream(ctx context.Context, u chain.URL, loc backend.Location, w *os.File) error {
	snaps, err := s.chainSnapshots(ctx, loc, u.Chain[len(u.Chain)-1:])
	if err != nil {
		return err
	}
	if !slices.Contains(snaps[0].Paths, u.Path) {
		return fmt.Errorf("%s is not a file of backup %s", u.Path, snaps[0].short())
	}
	return s.ReadFile(ctx, loc, snaps[0].short(), u.Path, w)
}

// PrepareDownload implements backend.Downloader. A single restore point (or the vTPM state,
// which is taken from the last restore point only) is streamed straight from the repository; a
// chain is pulled into a private temporary directory on the frontend and merged into one
// standalone qcow2 image (legacy rbd chains: a tar.gz of the pieces).
func (s *Store) PrepareDownload(ctx context.Context, u chain.URL, loc backend.Location) (*backend.Download, error) {
	snaps, err := s.chainSnapshots(ctx, loc, u.Chain)
	if err != nil {
		return nil, err
	}
	last := snaps[len(snaps)-1]
	if !slices.Contains(last.Paths, u.Path) {
		return nil, fmt.Errorf("%s is not a file of backup %s", u.Path, last.short())
	}
	self, err := backend.SelfPath()
	if err != nil {
		return nil, err
	}
	idx := u.DiskIndex()
	if idx == "tpm" || (len(snaps) == 1 && !u.RBD) {
		return &backend.Download{Command: []string{self, "restic", "stream", u.String()}}, nil
	}
	if s.rt.DryRun {
		s.rt.Planf("would pull %d restore points of disk %s into %s and merge them", len(snaps), idx, s.cfg.TmpDir)
		return &backend.Download{}, nil
	}
	tmp := backend.NewTempName(s.cfg.TmpDir)
	if err := os.MkdirAll(filepath.Join(tmp, "pieces"), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create a temporary directory: %v", err)
	}
	out, err := s.pullAndMerge(ctx, loc, snaps, idx, tmp, u)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return &backend.Download{Command: []string{self, "cat-file", out}, Clean: []string{self, "clean-temp", tmp}}, nil
}

// pullAndMerge pulls the file of disk idx of every snapshot (in parallel) into tmp/pieces and
// merges them into one standalone image at tmp/<name of u.Path>. The pieces are private copies,
// so they are chained and committed into the full one in place: only the increments are written.
func (s *Store) pullAndMerge(ctx context.Context, loc backend.Location, snaps []snapshot, idx, tmp string, u chain.URL) (string, error) {
	pieces := make([]string, len(snaps))
	srcs := make([]string, len(snaps))
	for i, sn := range snaps {
		src, err := diskFile(sn, idx)
		if err != nil {
			return "", err
		}
		srcs[i], pieces[i] = src, filepath.Join(tmp, "pieces", strconv.Itoa(i)+"."+path.Base(src))
	}
	sem := make(chan struct{}, pullParallel)
	errs := make([]error, len(snaps))
	var wg sync.WaitGroup
	for i := range snaps {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			errs[i] = s.pull(ctx, loc, snaps[i].short(), srcs[i], pieces[i])
		}(i)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	if u.RBD {
		out := filepath.Join(tmp, fmt.Sprintf("disk.%s.%d.tar.gz", idx, u.Chain.Last().ID))
		return out, tarGz(out, pieces, srcs)
	}
	out := filepath.Join(tmp, path.Base(u.Path))
	check, err := backend.ContentCheck(s.rt, pieces)
	if err != nil {
		return "", err
	}
	for _, argv := range qcow2.CommitArgs(pieces) {
		if _, err := s.rt.Run(ctx, remote.Cmd{Target: remote.Local, Argv: argv}, true); err != nil {
			return "", fmt.Errorf("cannot merge the restore points of disk %s: %w", idx, err)
		}
	}
	for _, p := range pieces[1:] {
		os.Remove(p)
	}
	if err := check(pieces[0], fmt.Sprintf("disk %s of backups %v", idx, snapIDs(snaps))); err != nil {
		return "", err
	}
	return out, os.Rename(pieces[0], out)
}

// pullParallel is how many files are pulled from the repository at once.
const pullParallel = 4

// pull dumps one stored file into a local file.
func (s *Store) pull(ctx context.Context, loc backend.Location, snap, src, dst string) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = s.ReadFile(ctx, loc, snap, src, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// tarGz bundles files into a gzip tar under the base names of names, the form the Ceph image
// datastore imports.
func tarGz(out string, files, names []string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for i, p := range files {
		if err := addToTar(tw, p, filepath.Base(names[i])); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return f.Close()
}

func addToTar(tw *tar.Writer, p, name string) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: st.Size(), ModTime: st.ModTime()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, in)
	return err
}

func snapIDs(snaps []snapshot) []string {
	out := make([]string, len(snaps))
	for i, sn := range snaps {
		out[i] = sn.short()
	}
	return out
}
