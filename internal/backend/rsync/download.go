package rsync

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/qcow2"
	"onebackup/internal/remote"
)

// ReadFile implements backend.FileReader: cat of a file of backup snap on the rsync host,
// checked against the backup's checksum record as it passes.
func (s *Store) ReadFile(ctx context.Context, loc backend.Location, snap, file string, w io.Writer) error {
	dir, err := s.backupDir(loc.VMID, snap)
	if err != nil {
		return err
	}
	if path.Dir(file) != dir {
		return fmt.Errorf("%s is not a file of backup %s of VM %d (%s)", file, snap, loc.VMID, dir)
	}
	sums, err := s.Sums(ctx, loc, snap)
	if err != nil {
		return err
	}
	c := sums.NewChecker(snap, file, w)
	if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"cat", "--", file}, Stdout: c}, false); err != nil {
		return fmt.Errorf("cannot read %s: %w", file, err)
	}
	return c.Check()
}

// Stream implements backend.Downloader.
func (s *Store) Stream(ctx context.Context, u chain.URL, loc backend.Location, w *os.File) error {
	return s.ReadFile(ctx, loc, u.Chain.Last().Snap, u.Path, w)
}

// ChainFiles implements backend.ChainLister.
func (s *Store) ChainFiles(ctx context.Context, u chain.URL, loc backend.Location) ([]backend.StoredFile, error) {
	files, err := s.chainFiles(loc, u.Chain, u.DiskIndex(), u.RBD)
	if err != nil {
		return nil, err
	}
	if files[len(files)-1] != u.Path {
		return nil, fmt.Errorf("%s is not the file of disk %s in backup %s", u.Path, u.DiskIndex(), u.Chain.Last().Snap)
	}
	out := make([]backend.StoredFile, len(files))
	for i, f := range files {
		out[i] = backend.StoredFile{Snap: u.Chain[i].Snap, Path: f}
	}
	return out, nil
}

// chainFiles are the stored files of disk idx along c, oldest first: disk.<idx>.<increment id>
// in each backup directory (legacy rbd chains: .rbd2 for the first, .<id>.rbdiff after).
func (s *Store) chainFiles(loc backend.Location, c chain.Chain, idx string, rbd bool) ([]string, error) {
	var files []string
	for i, it := range c {
		dir, err := s.backupDir(loc.VMID, it.Snap)
		if err != nil {
			return nil, err
		}
		name := "disk." + idx + "." + strconv.Itoa(it.ID)
		if rbd && i == 0 {
			name = "disk." + idx + ".rbd2"
		} else if rbd {
			name += ".rbdiff"
		}
		files = append(files, path.Join(dir, name))
	}
	return files, nil
}

// PrepareDownload implements backend.Downloader. A single restore point (and the vTPM state,
// taken from the last restore point only) is read in place; a chain is merged on the rsync host
// into a temporary standalone qcow2 image, reading the stored increments without modifying them
// (legacy rbd chains: a tar.gz of the pieces).
func (s *Store) PrepareDownload(ctx context.Context, u chain.URL, loc backend.Location) (*backend.Download, error) {
	last := u.Chain.Last()
	dir, err := s.backupDir(loc.VMID, last.Snap)
	if err != nil {
		return nil, err
	}
	if path.Dir(u.Path) != dir {
		return nil, fmt.Errorf("%s is not a file of backup %s of VM %d (%s)", u.Path, last.Snap, loc.VMID, dir)
	}
	self, err := backend.SelfPath()
	if err != nil {
		return nil, err
	}
	host := s.cfg.User + "@" + s.cfg.Host
	idx := u.DiskIndex()
	if idx == "tpm" || (len(u.Chain) == 1 && !u.RBD) {
		if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"test", "-f", u.Path}}, false); err != nil {
			return nil, fmt.Errorf("%s is not a file of backup %s on %s", u.Path, last.Snap, s.target())
		}
		// cat-file streams it without knowing of backups: the check is made here, on the host.
		if _, err := s.checkStored(ctx, loc, []backend.StoredFile{{Snap: last.Snap, Path: u.Path}}); err != nil {
			return nil, err
		}
		return &backend.Download{Command: []string{self, "cat-file", "--host", host, u.Path}}, nil
	}
	files, err := s.chainFiles(loc, u.Chain, idx, u.RBD)
	if err != nil {
		return nil, err
	}
	stored := make([]backend.StoredFile, len(files))
	for i, f := range files {
		stored[i] = backend.StoredFile{Snap: u.Chain[i].Snap, Path: f}
	}
	if _, err := s.checkStored(ctx, loc, stored); err != nil {
		return nil, err
	}
	tmp := backend.NewTempName(s.cfg.TmpDir)
	if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"mkdir", "-m", "0700", "--", tmp}}, true); err != nil {
		return nil, fmt.Errorf("cannot create a temporary directory on %s: %w", s.target(), err)
	}
	var argv []string
	out := path.Join(tmp, path.Base(u.Path))
	if u.RBD {
		out = path.Join(tmp, fmt.Sprintf("disk.%s.%d.tar.gz", idx, last.ID))
		argv = []string{"tar", "-czf", out}
		for _, f := range files {
			argv = append(argv, "-C", path.Dir(f), path.Base(f))
		}
	} else if argv, err = qcow2.MergeArgs(files, out); err != nil {
		return nil, err
	}
	if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: argv}, true); err != nil {
		s.rt.Run(context.WithoutCancel(ctx), remote.Cmd{Target: s.target(), Argv: []string{"rm", "-rf", "--", tmp}}, true)
		return nil, fmt.Errorf("cannot prepare disk %s of %s on %s: %w", idx, u.Chain, s.target(), err)
	}
	return &backend.Download{
		Command: []string{self, "cat-file", "--host", host, out},
		Clean:   []string{self, "clean-temp", "--host", host, tmp},
	}, nil
}
