package rsync

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/qcow2"
	"onebackup/internal/remote"
)

// Flatten implements backend.Flattener on the rsync host: the merge of each disk goes into a NEW
// backup directory (named as in the newest merged restore point, with its vm.xml and vTPM
// state); stored increments are only read, never rebased or committed in place. The merged
// directories are removed last, so a failure or kill before that leaves the old chain intact.
func (s *Store) Flatten(ctx context.Context, loc backend.Location, merge chain.Chain) (string, int64, error) {
	newest := merge.Last()
	files, err := s.Files(ctx, loc, newest.Snap)
	if err != nil {
		return "", 0, err
	}
	if s.rt.DryRun {
		s.rt.Planf("would merge backups %v of VM %d into a new backup directory, then remove them", merge.Snaps(), loc.VMID)
		return "", 0, nil
	}
	id, dir, err := s.newBackupDir(ctx, loc.VMID)
	if err != nil {
		return "", 0, err
	}
	if err := s.fillMerged(ctx, loc, merge, files, dir); err != nil {
		s.removeDirs(context.WithoutCancel(ctx), []string{dir})
		return "", 0, err
	}
	size, err := s.du(ctx, dir)
	if err != nil {
		s.removeDirs(context.WithoutCancel(ctx), []string{dir})
		return "", 0, err
	}
	if err := s.Remove(ctx, loc, merge.Snaps()); err != nil {
		return "", 0, fmt.Errorf("merged backup %s is stored, but the merged ones were not removed: %w", id, err)
	}
	return id, size, nil
}

func (s *Store) fillMerged(ctx context.Context, loc backend.Location, merge chain.Chain, newestFiles []string, dir string) error {
	newestDir := path.Dir(newestFiles[0])
	docs := []string{path.Join(newestDir, "vm.xml")}
	names := []string{"vm.xml"}
	for _, f := range newestFiles {
		idx := chain.DiskIndex(path.Base(f))
		names = append(names, path.Base(f))
		if idx == "tpm" {
			docs = append(docs, f)
			continue
		}
		if idx == "" || strings.HasSuffix(f, ".rbd2") || strings.HasSuffix(f, ".rbdiff") {
			return fmt.Errorf("cannot flatten %s: only qcow2 chains can be merged", f)
		}
		pieces, err := s.chainFiles(loc, merge, idx, false)
		if err != nil {
			return err
		}
		// qemu-img reads the pieces on the rsync host: check them there first, so that a
		// damaged increment is reported instead of merged into the new full.
		stored := make([]backend.StoredFile, len(pieces))
		for i, p := range pieces {
			stored[i] = backend.StoredFile{Snap: merge[i].Snap, Path: p}
		}
		if _, err := s.checkStored(ctx, loc, stored); err != nil {
			return err
		}
		argv, err := qcow2.MergeArgs(pieces, path.Join(dir, path.Base(f)))
		if err != nil {
			return err
		}
		if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: argv}, true); err != nil {
			return fmt.Errorf("cannot merge disk %s of backups %v: %w", idx, merge.Snaps(), err)
		}
		if s.cfg.Sparsify {
			s.rt.Sparsify(ctx, "RSYNC_SPARSIFY", s.target(), path.Join(dir, path.Base(f)))
		}
	}
	var stored []backend.StoredFile
	for _, d := range docs {
		stored = append(stored, backend.StoredFile{Snap: merge.Last().Snap, Path: d})
	}
	if _, err := s.checkStored(ctx, loc, stored); err != nil {
		return err
	}
	cp := remote.Cmd{Target: s.target(), Argv: append(append([]string{"cp", "--"}, docs...), dir+"/")}
	if _, err := s.rt.Run(ctx, cp, true); err != nil {
		return fmt.Errorf("cannot copy %v into the merged backup: %w", docs, err)
	}
	return s.recordSums(ctx, dir, names)
}

// du is the disk space a backup directory takes, in bytes.
func (s *Store) du(ctx context.Context, dir string) (int64, error) {
	res, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"du", "-sk", "--", dir}}, false)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(res.Stdout))
	kib, err := strconv.ParseInt(firstOr(f, ""), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("unexpected du output %q", res.Stdout)
	}
	return kib << 10, nil
}

func firstOr(f []string, def string) string {
	if len(f) == 0 {
		return def
	}
	return f[0]
}
