package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
)

// INCREMENT_MODE=SNAPSHOT keeps, per disk, a base layer <snap>/0 holding the disk at the last
// successful backup point and one overlay <snap>/<BID> on top of it holding the writes since
// (disk.<id> links to the active layer). Increment BID: a new overlay <snap>/<BID+1> takes the
// writes from the backup point on, <snap>/<BID> is copied as the increment. Unlike the
// reference (W-2), nothing is folded before the upload is known to have succeeded: postbackup
// folds <snap>/<BID> into <snap>/0 on success, and on failure commits <snap>/<BID+1> back into
// <snap>/<BID>, so a retry of the same BID finds the state it expects.

// snapLayout is where a disk's layers are.
type snapLayout struct {
	link    string // <VM dir>/disk.<id>
	dir     string // absolute directory of the layers
	linkDir string // the directory as written in the link (relative for non-persistent disks)
	top     int    // number of the active layer; -1: disk.<id> is a plain file
}

func (l snapLayout) layer(n int) string { return filepath.Join(l.dir, strconv.Itoa(n)) }

func readLayout(d hostjob.Disk) (snapLayout, error) {
	l := snapLayout{link: d.Path, top: -1}
	fi, err := os.Lstat(d.Path)
	if err != nil {
		return l, err
	}
	if fi.Mode()&os.ModeSymlink == 0 {
		l.dir = d.Path + ".snap"
		l.linkDir = filepath.Base(l.dir)
		return l, nil
	}
	target, err := os.Readlink(d.Path)
	if err != nil {
		return l, err
	}
	l.linkDir = filepath.Dir(target)
	l.dir = l.linkDir
	if !filepath.IsAbs(l.dir) {
		l.dir = filepath.Join(filepath.Dir(d.Path), l.dir)
	}
	n, err := strconv.Atoi(filepath.Base(target))
	if err != nil || n < 0 {
		return l, fmt.Errorf("disk %d links to %s: not a numbered snapshot layer", d.ID, target)
	}
	l.top = n
	return l, nil
}

// relink points disk.<id> at layer n atomically.
func (l *snapLayout) relink(n int) error {
	tmp := l.link + ".relink"
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join(l.linkDir, strconv.Itoa(n)), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.link); err != nil {
		return err
	}
	l.top = n
	return nil
}

// backingOf is the layer number n's image is backed by (-1 when not a layer of l).
func backingOf(ctx context.Context, l snapLayout, n int) int {
	info, err := qemuImgInfo(ctx, l.layer(n))
	if err != nil || info.Backing == "" {
		return -1
	}
	b := info.Backing
	if !filepath.IsAbs(b) {
		b = filepath.Join(l.dir, b)
	}
	if filepath.Clean(filepath.Dir(b)) != filepath.Clean(l.dir) {
		return -1
	}
	m, err := strconv.Atoi(filepath.Base(b))
	if err != nil {
		return -1
	}
	return m
}

func (f *File) snapshotBackup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	d, err := liveDomain(ctx, j, hv)
	if err != nil {
		return err
	}
	defer closeDomain(d)
	layouts := map[int]*snapLayout{}
	full := map[int]bool{} // disks taking a full (chain start, or chain state lost)
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil {
			return err
		}
		// An earlier try of this BID that was never rolled back.
		if err := f.snapRollback(ctx, j, d, disk, &l); err != nil {
			return err
		}
		if j.PID >= 0 && (l.top != j.BID || backingOf(ctx, l, l.top) != 0) {
			j.Log.Warnf("SNAPSHOT chain state lost for VM %d disk %d (active layer %d, expected %d over 0): taking a full backup inside the chain as increment %d",
				j.VMID, disk.ID, l.top, j.BID, j.BID)
			full[disk.ID] = true
		}
		if j.PID < 0 {
			full[disk.ID] = true
		}
		if full[disk.ID] {
			if err := f.snapFoldAll(ctx, j, d, disk, &l); err != nil {
				return err
			}
		}
		layouts[disk.ID] = &l
	}
	// New active layers, switched to in one atomic call (live).
	next := j.BID + 1
	for _, disk := range j.Disks {
		l := layouts[disk.ID]
		nl := l.layer(next)
		os.Remove(nl)
		if _, err := hostjob.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", l.layer(l.top), nl); err != nil {
			return err
		}
	}
	if d != nil {
		layers := map[string]string{}
		for _, disk := range j.Disks {
			layers[disk.Target] = layouts[disk.ID].layer(next)
		}
		if err := hypervisor.AtQuiescedPoint(ctx, hv, j, func() error { return d.Snapshot(layers) }); err != nil {
			for _, f := range layers {
				os.Remove(f)
			}
			return fmt.Errorf("external snapshot of %s: %w", j.DeployID, err)
		}
	}
	for _, disk := range j.Disks {
		l := layouts[disk.ID]
		prev := l.top
		if err := l.relink(next); err != nil {
			return err
		}
		hostjob.Hold(ctx, j.TmpDir, "export")
		target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", disk.ID, j.BID))
		os.Remove(target)
		var err error
		switch {
		case full[disk.ID]:
			// The whole disk as of the backup point; inside a chain every cluster explicit.
			info, ierr := qemuImgInfo(ctx, l.layer(0))
			if ierr != nil {
				return ierr
			}
			err = fullFromImage(ctx, l.layer(0), info, target, j.PID >= 0)
		default:
			// The layer of the writes since the last backup, read-only now.
			if _, err = hostjob.Run(ctx, nil, "cp", "--sparse=always", l.layer(prev), target); err == nil {
				_, err = hostjob.Run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-b", "", target)
			}
		}
		if err != nil {
			return fmt.Errorf("disk %d: %w", disk.ID, err)
		}
	}
	return nil
}

// snapRollback undoes a try of this BID: the active layer BID+1 goes back into its backing.
func (f *File) snapRollback(ctx context.Context, j *hostjob.Job, d hypervisor.Domain, disk hostjob.Disk, l *snapLayout) error {
	if l.top != j.BID+1 {
		return nil
	}
	b := backingOf(ctx, *l, l.top)
	if b < 0 {
		return fmt.Errorf("disk %d: layer %s has no numbered backing layer", disk.ID, l.layer(l.top))
	}
	j.Log.Infof("disk %d: rolling back snapshot layer %d into %d", disk.ID, l.top, b)
	if err := f.commitTop(ctx, j, d, disk, *l, b); err != nil {
		return err
	}
	old := l.layer(l.top)
	if err := l.relink(b); err != nil {
		return err
	}
	return os.Remove(old)
}

// snapFoldAll brings a disk to "active layer 0" (moving a plain file into <snap>/0 first).
func (f *File) snapFoldAll(ctx context.Context, j *hostjob.Job, d hypervisor.Domain, disk hostjob.Disk, l *snapLayout) error {
	if l.top < 0 && d != nil {
		return f.snapAdoptLive(ctx, d, disk, l)
	}
	if l.top < 0 {
		if err := os.MkdirAll(l.dir, 0o755); err != nil {
			return err
		}
		if err := os.Rename(l.link, l.layer(0)); err != nil {
			return err
		}
		os.Symlink(".", filepath.Join(l.dir, filepath.Base(l.dir)))
		return l.relink(0)
	}
	for l.top > 0 {
		b := backingOf(ctx, *l, l.top)
		if b < 0 || b >= l.top {
			return fmt.Errorf("disk %d: cannot fold layer %d (backing %d)", disk.ID, l.top, b)
		}
		if err := f.commitTop(ctx, j, d, disk, *l, b); err != nil {
			return err
		}
		old := l.layer(l.top)
		if err := l.relink(b); err != nil {
			return err
		}
		os.Remove(old)
	}
	return nil
}

// commitTop merges the active layer into layer base (live: active block commit + pivot).
func (f *File) commitTop(ctx context.Context, j *hostjob.Job, d hypervisor.Domain, disk hostjob.Disk, l snapLayout, base int) error {
	if d == nil {
		_, err := hostjob.Run(ctx, nil, "qemu-img", "commit", "-q", "-b", l.layer(base), l.layer(l.top))
		return err
	}
	baseName := d.ChainName(disk.Target, l.layer(base))
	if baseName == l.link {
		// QEMU knows the base by the disk.<id> link and reopens it read-write by that name:
		// the link must designate the base while it does (it ends there after the pivot).
		if err := l.relink(base); err != nil {
			return err
		}
	}
	if err := d.CommitActive(ctx, disk.Target, baseName); err != nil {
		return fmt.Errorf("disk %d: %w", disk.ID, err)
	}
	return nil
}

// snapshotFinish: success folds layer BID into 0 (the active BID+1 then rests on 0); failure
// rolls BID+1 back. Both are no-ops when already done.
func (f *File) snapshotFinish(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	d, err := liveDomain(ctx, j, hv)
	if err != nil {
		return err
	}
	defer closeDomain(d)
	var errs []error
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !j.Success {
			errs = append(errs, f.snapRollback(ctx, j, d, disk, &l))
			continue
		}
		if j.BID == 0 || l.top != j.BID+1 || backingOf(ctx, l, l.top) != j.BID {
			continue
		}
		if backingOf(ctx, l, j.BID) != 0 {
			errs = append(errs, fmt.Errorf("disk %d: layer %d does not rest on layer 0", disk.ID, j.BID))
			continue
		}
		if d != nil {
			baseName := d.ChainName(disk.Target, l.layer(0))
			active := l.top
			if baseName == l.link {
				// QEMU reopens the base read-write by the name it knows, the disk.<id> link:
				// point the link at the base for the duration of the commit only.
				if err := l.relink(0); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			err := d.Commit(ctx, disk.Target, baseName, d.ChainName(disk.Target, l.layer(j.BID)))
			if rerr := l.relink(active); rerr != nil {
				err = errors.Join(err, rerr)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("block commit of layer %d of disk %d: %v", j.BID, disk.ID, err))
				continue
			}
			// libvirt records the base under the name it knows (possibly the disk.<id> link,
			// which points at the active layer now): write the layer's real path instead.
			if err := d.SetBacking(l.layer(l.top), l.layer(0)); err != nil {
				errs = append(errs, fmt.Errorf("disk %d: cannot record layer 0 as the backing of layer %d: %v", disk.ID, l.top, err))
				continue
			}
		} else {
			if _, err := hostjob.Run(ctx, nil, "qemu-img", "commit", "-q", "-d", l.layer(j.BID)); err != nil {
				errs = append(errs, err)
				continue
			}
			if _, err := hostjob.Run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-F", "qcow2", "-b", l.layer(0), l.layer(l.top)); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if backingOf(ctx, l, l.top) == 0 {
			os.Remove(l.layer(j.BID))
		}
	}
	return errors.Join(errs...)
}

// snapAdoptLive moves a running plain-file disk (ssh/local system datastores) into the layer
// layout: a block copy of the whole chain into <snap>/0, pivot, then disk.<id> -> <snap>/0.
// QEMU then knows layer 0 by its own path.
func (f *File) snapAdoptLive(ctx context.Context, d hypervisor.Domain, disk hostjob.Disk, l *snapLayout) error {
	info, err := qemuImgInfo(ctx, disk.Path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return err
	}
	os.Symlink(".", filepath.Join(l.dir, filepath.Base(l.dir)))
	dst := l.layer(0)
	os.Remove(dst)
	if _, err := hostjob.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", dst, fmt.Sprint(info.VirtualSize)); err != nil {
		return err
	}
	if err := d.CopyTo(ctx, disk.Target, dst); err != nil {
		os.Remove(dst)
		return fmt.Errorf("disk %d: %w", disk.ID, err)
	}
	// The VM runs on <snap>/0 now: the plain file is no longer used.
	old := disk.Path + ".adopted"
	if err := os.Rename(disk.Path, old); err != nil {
		return err
	}
	if err := l.relink(0); err != nil {
		return err
	}
	return os.Remove(old)
}
