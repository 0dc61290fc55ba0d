package kvmfile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"onebackup/internal/storage"
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

func readLayout(d storage.Disk) (snapLayout, error) {
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

func (a *Adapter) snapshotBackup(ctx context.Context, j *storage.Job) error {
	d, err := liveDomain(j)
	if err != nil {
		return err
	}
	defer d.close()
	layouts := map[int]*snapLayout{}
	full := map[int]bool{} // disks taking a full (chain start, or chain state lost)
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil {
			return err
		}
		// An earlier try of this BID that was never rolled back.
		if err := a.snapRollback(ctx, j, d, disk, &l); err != nil {
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
			if err := a.snapFoldAll(ctx, j, d, disk, &l); err != nil {
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
		if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", l.layer(l.top), nl); err != nil {
			return err
		}
	}
	if d != nil {
		var sx strings.Builder
		sx.WriteString("<domainsnapshot><disks>")
		all, err := d.disks()
		if err != nil {
			return err
		}
		for _, dd := range all {
			id, ok := -1, false
			for _, disk := range j.Disks {
				if disk.Target == dd.Target {
					id, ok = disk.ID, true
				}
			}
			if !ok {
				fmt.Fprintf(&sx, "<disk name='%s' snapshot='no'/>", dd.Target)
				continue
			}
			fmt.Fprintf(&sx, "<disk name='%s' snapshot='external' type='file'><source file='%s'/><driver type='qcow2'/></disk>",
				dd.Target, xmlEscape(layouts[id].layer(next)))
		}
		sx.WriteString("</disks></domainsnapshot>")
		undo, err := freeze(ctx, d, j)
		if err != nil {
			return err
		}
		hold(ctx, j.TmpDir, "frozen")
		if ctx.Err() != nil {
			err = ctx.Err()
		} else {
			var snap *libvirt.DomainSnapshot
			snap, err = d.dom.CreateSnapshotXML(sx.String(), libvirt.DOMAIN_SNAPSHOT_CREATE_DISK_ONLY|libvirt.DOMAIN_SNAPSHOT_CREATE_ATOMIC|
				libvirt.DOMAIN_SNAPSHOT_CREATE_NO_METADATA|libvirt.DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)
			if snap != nil {
				snap.Free()
			}
		}
		if uerr := undo(); uerr != nil {
			err = errors.Join(err, uerr)
		}
		if err != nil {
			for _, disk := range j.Disks {
				os.Remove(layouts[disk.ID].layer(next))
			}
			return fmt.Errorf("external snapshot of %s: %v", j.DeployID, err)
		}
	}
	for _, disk := range j.Disks {
		l := layouts[disk.ID]
		prev := l.top
		if err := l.relink(next); err != nil {
			return err
		}
		hold(ctx, j.TmpDir, "export")
		target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", disk.ID, j.BID))
		os.Remove(target)
		var err error
		switch {
		case j.PID < 0:
			err = convertFull(ctx, l.layer(0), "qcow2", target)
		case full[disk.ID]:
			info, ierr := qemuImgInfo(ctx, l.layer(0))
			if ierr != nil {
				return ierr
			}
			err = convertExplicit(ctx, j, storage.Disk{ID: disk.ID, Path: l.layer(0)}, info, target)
		default:
			// The layer of the writes since the last backup, read-only now.
			if _, err = run(ctx, nil, "cp", "--sparse=always", l.layer(prev), target); err == nil {
				_, err = run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-b", "", target)
			}
		}
		if err != nil {
			return fmt.Errorf("disk %d: %w", disk.ID, err)
		}
	}
	return nil
}

// snapRollback undoes a try of this BID: the active layer BID+1 goes back into its backing.
func (a *Adapter) snapRollback(ctx context.Context, j *storage.Job, d *domain, disk storage.Disk, l *snapLayout) error {
	if l.top != j.BID+1 {
		return nil
	}
	b := backingOf(ctx, *l, l.top)
	if b < 0 {
		return fmt.Errorf("disk %d: layer %s has no numbered backing layer", disk.ID, l.layer(l.top))
	}
	j.Log.Infof("disk %d: rolling back snapshot layer %d into %d", disk.ID, l.top, b)
	if err := a.commitTop(ctx, j, d, disk, *l, b); err != nil {
		return err
	}
	old := l.layer(l.top)
	if err := l.relink(b); err != nil {
		return err
	}
	return os.Remove(old)
}

// snapFoldAll brings a disk to "active layer 0" (moving a plain file into <snap>/0 first).
func (a *Adapter) snapFoldAll(ctx context.Context, j *storage.Job, d *domain, disk storage.Disk, l *snapLayout) error {
	if l.top < 0 && d != nil {
		return a.snapAdoptLive(ctx, d, disk, l)
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
		if err := a.commitTop(ctx, j, d, disk, *l, b); err != nil {
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
func (a *Adapter) commitTop(ctx context.Context, j *storage.Job, d *domain, disk storage.Disk, l snapLayout, base int) error {
	if d == nil {
		_, err := run(ctx, nil, "qemu-img", "commit", "-q", "-b", l.layer(base), l.layer(l.top))
		return err
	}
	baseName := d.chainPath(disk.Target, l.layer(base))
	if baseName == l.link {
		// QEMU knows the base by the disk.<id> link and reopens it read-write by that name:
		// the link must designate the base while it does (it ends there after the pivot).
		if err := l.relink(base); err != nil {
			return err
		}
	}
	if err := d.dom.BlockCommit(disk.Target, baseName, "", 0, libvirt.DOMAIN_BLOCK_COMMIT_ACTIVE); err != nil {
		return fmt.Errorf("block commit of disk %d: %v", disk.ID, err)
	}
	if err := d.waitBlockJob(ctx, disk.Target, true); err != nil {
		return err
	}
	if err := d.dom.BlockJobAbort(disk.Target, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
		return fmt.Errorf("pivot of disk %d: %v", disk.ID, err)
	}
	return d.waitBlockJob(ctx, disk.Target, false)
}

// waitBlockJob waits until the disk's block job is ready (active commit) or gone.
func (d *domain) waitBlockJob(ctx context.Context, target string, ready bool) error {
	for i := 0; ; i++ {
		info, err := d.dom.GetBlockJobInfo(target, 0)
		if err != nil {
			return err
		}
		gone := info.Type == 0 && info.End == 0
		if gone && ready {
			return errors.New("block job of " + target + " ended before it was ready")
		}
		if gone || ready && info.End > 0 && info.Cur == info.End {
			if !gone && ready {
				time.Sleep(50 * time.Millisecond) // let the job report READY
			}
			return nil
		}
		if i > 6000 {
			return errors.New("block job of " + target + " does not finish")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// snapshotFinish: success folds layer BID into 0 (the active BID+1 then rests on 0); failure
// rolls BID+1 back. Both are no-ops when already done.
func (a *Adapter) snapshotFinish(ctx context.Context, j *storage.Job) error {
	d, err := liveDomain(j)
	if err != nil {
		return err
	}
	defer d.close()
	var errs []error
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !j.Success {
			errs = append(errs, a.snapRollback(ctx, j, d, disk, &l))
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
			baseName := d.chainPath(disk.Target, l.layer(0))
			active := l.top
			if baseName == l.link {
				// QEMU reopens the base read-write by the name it knows, the disk.<id> link:
				// point the link at the base for the duration of the commit only.
				if err := l.relink(0); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			err := d.dom.BlockCommit(disk.Target, baseName, d.chainPath(disk.Target, l.layer(j.BID)), 0, 0)
			if err == nil {
				err = d.waitBlockJob(ctx, disk.Target, false)
			}
			if rerr := l.relink(active); rerr != nil {
				err = errors.Join(err, rerr)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("block commit of layer %d of disk %d: %v", j.BID, disk.ID, err))
				continue
			}
			// libvirt records the base under the name it knows (possibly the disk.<id> link,
			// which points at the active layer now): write the layer's real path instead.
			node, err := d.formatNode(l.layer(l.top))
			if err == nil {
				err = d.qmp("change-backing-file", map[string]any{"device": node.NodeName, "image-node-name": node.NodeName, "backing-file": l.layer(0)}, nil)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("disk %d: cannot record layer 0 as the backing of layer %d: %v", disk.ID, l.top, err))
				continue
			}
		} else {
			if _, err := run(ctx, nil, "qemu-img", "commit", "-q", "-d", l.layer(j.BID)); err != nil {
				errs = append(errs, err)
				continue
			}
			if _, err := run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-F", "qcow2", "-b", l.layer(0), l.layer(l.top)); err != nil {
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

// chainPath is the name libvirt knows a layer of a disk's backing chain by: a domain started
// on disk.<id> knows the first layer by the link's path, whatever the link points at now. The
// layer is found by its position in the image's real backing chain.
func (d *domain) chainPath(target, file string) string {
	want, err := filepath.EvalSymlinks(file)
	if err != nil {
		return file
	}
	all, err := d.disks()
	if err != nil {
		return file
	}
	for _, dd := range all {
		if dd.Target != target {
			continue
		}
		names := append([]string{dd.Source}, dd.Chain...)
		out, err := run(context.Background(), nil, "qemu-img", "info", "--backing-chain", "--output=json", "--force-share", dd.Source)
		if err != nil {
			return file
		}
		var chain []struct {
			Filename string `json:"filename"`
		}
		if json.Unmarshal(out, &chain) != nil {
			return file
		}
		for i, c := range chain {
			if real, err := filepath.EvalSymlinks(c.Filename); err == nil && real == want && i < len(names) {
				return names[i]
			}
		}
	}
	return file
}

// snapAdoptLive moves a running plain-file disk (ssh/local system datastores) into the layer
// layout: a block copy of the whole chain into <snap>/0, pivot, then disk.<id> -> <snap>/0.
// QEMU then knows layer 0 by its own path.
func (a *Adapter) snapAdoptLive(ctx context.Context, d *domain, disk storage.Disk, l *snapLayout) error {
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
	if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", dst, fmt.Sprint(info.VirtualSize)); err != nil {
		return err
	}
	xml := fmt.Sprintf("<disk type='file'><source file='%s'/><driver type='qcow2'/></disk>", xmlEscape(dst))
	if err := d.dom.BlockCopy(disk.Target, xml, &libvirt.DomainBlockCopyParameters{}, libvirt.DOMAIN_BLOCK_COPY_REUSE_EXT|libvirt.DOMAIN_BLOCK_COPY_TRANSIENT_JOB); err != nil {
		os.Remove(dst)
		return fmt.Errorf("block copy of disk %d into %s: %v", disk.ID, dst, err)
	}
	if err := d.waitBlockJob(ctx, disk.Target, true); err != nil {
		d.dom.BlockJobAbort(disk.Target, 0)
		os.Remove(dst)
		return err
	}
	if err := d.dom.BlockJobAbort(disk.Target, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
		d.dom.BlockJobAbort(disk.Target, 0)
		os.Remove(dst)
		return fmt.Errorf("pivot of disk %d to %s: %v", disk.ID, dst, err)
	}
	if err := d.waitBlockJob(ctx, disk.Target, false); err != nil {
		return err
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
