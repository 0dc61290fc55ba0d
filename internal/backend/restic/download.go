package restic

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

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

func (s *Store) pullAndMerge(ctx context.Context, loc backend.Location, snaps []snapshot, idx, tmp string, u chain.URL) (string, error) {
	var pieces []string
	for _, sn := range snaps {
		src, err := diskFile(sn, idx)
		if err != nil {
			return "", err
		}
		dst := filepath.Join(tmp, "pieces", path.Base(src))
		if slices.Contains(pieces, dst) {
			return "", fmt.Errorf("two restore points hold %s", path.Base(src))
		}
		if err := s.pull(ctx, loc, sn.short(), src, dst); err != nil {
			return "", err
		}
		pieces = append(pieces, dst)
	}
	if u.RBD {
		out := filepath.Join(tmp, fmt.Sprintf("disk.%s.%d.tar.gz", idx, u.Chain.Last().ID))
		return out, tarGz(out, pieces)
	}
	out := filepath.Join(tmp, path.Base(u.Path))
	args, err := qcow2.MergeArgs(pieces, out)
	if err != nil {
		return "", err
	}
	if _, err := s.rt.Run(ctx, remote.Cmd{Target: remote.Local, Argv: args}, true); err != nil {
		return "", fmt.Errorf("cannot merge the restore points of disk %s: %w", idx, err)
	}
	for _, p := range pieces {
		os.Remove(p)
	}
	return out, nil
}

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

// tarGz bundles files (by base name) into a gzip tar, the form the Ceph image datastore imports.
func tarGz(out string, files []string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for _, p := range files {
		if err := addToTar(tw, p); err != nil {
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

func addToTar(tw *tar.Writer, p string) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: filepath.Base(p), Mode: 0o644, Size: st.Size(), ModTime: st.ModTime()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, in)
	return err
}
