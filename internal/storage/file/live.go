package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
)

// Live backups of file disks run inside the VM's process (hypervisor.Domain): the push backup
// job with its checkpoint, the anchors that keep the chain of increments usable, and the repair
// of what an interrupted run left on a running VM.

// parentUsable says whether checkpoint PID can serve as the base of an increment, redefining
// its metadata when only the bitmaps survived (transient domains forget checkpoints at every
// power cycle). The reason is set when CBT was lost.
func parentUsable(d hypervisor.Domain, j *hostjob.Job, targets map[int]hypervisor.DomainDisk) (bool, string) {
	name := anchorName(j.VMID, j.PID)
	for _, disk := range j.Disks {
		bitmaps, err := d.Bitmaps(targets[disk.ID].Source)
		if err != nil {
			return false, err.Error()
		}
		found := false
		for _, b := range bitmaps {
			if b.Name == name {
				found = true
				if b.Inconsistent || !b.Recording {
					return false, fmt.Sprintf("bitmap %s of disk %d is inconsistent (QEMU stopped uncleanly)", name, disk.ID)
				}
			}
		}
		if !found {
			return false, fmt.Sprintf("bitmap %s is missing from disk %d", name, disk.ID)
		}
	}
	if d.HasCheckpoint(name) {
		return true, ""
	}
	selected := map[string]bool{}
	for _, disk := range j.Disks {
		selected[targets[disk.ID].Target] = true
	}
	if err := d.RedefineCheckpoint(name, selected); err != nil {
		return false, fmt.Sprintf("checkpoint %s metadata is gone and cannot be redefined: %v", name, err)
	}
	j.Log.Infof("checkpoint %s redefined from the bitmaps in the disk images", name)
	return true, ""
}

// liveBackup takes a push-mode backup: full (FULL mode, chain start, or CBT lost) or an
// increment from checkpoint PID, creating checkpoint BID atomically with the backup point.
func (f *File) liveBackup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	d, err := liveDomain(ctx, j, hv)
	if err != nil {
		return err
	}
	defer d.Close()
	all, err := d.Disks()
	if err != nil {
		return err
	}
	targets := map[int]hypervisor.DomainDisk{}
	for _, disk := range j.Disks {
		var found *hypervisor.DomainDisk
		for i := range all {
			if all[i].Target == disk.Target {
				found = &all[i]
			}
		}
		if found == nil {
			return fmt.Errorf("disk %d (target %s) is not attached to domain %s", disk.ID, disk.Target, j.DeployID)
		}
		want, _ := filepath.EvalSymlinks(disk.Path)
		got, _ := filepath.EvalSymlinks(found.Source)
		if want != "" && got != "" && want != got {
			return fmt.Errorf("disk %d: domain %s uses %s on %s, not %s: the VM does not run on its original chain", disk.ID, j.DeployID, found.Source, disk.Target, disk.Path)
		}
		targets[disk.ID] = *found
	}
	if err := d.AbortBackupJob(); err != nil {
		return err
	}

	since := ""
	if j.CBT() {
		if j.PID >= 0 {
			// A failed try of this BID left its checkpoint: drop it (libvirt merges it into PID).
			if err := d.DeleteCheckpoint(anchorName(j.VMID, j.BID)); err != nil {
				return err
			}
			if ok, why := parentUsable(d, j, targets); ok {
				since = anchorName(j.VMID, j.PID)
			} else {
				j.Log.Warnf("CBT lost for VM %d (%s): taking a full backup inside the chain as increment %d", j.VMID, why, j.BID)
			}
		}
		if since == "" {
			if err := dropAllAnchors(d, j, targets); err != nil {
				return err
			}
		}
	}

	push := hypervisor.PushBackup{Since: since, Outputs: map[string]string{}}
	if j.CBT() {
		push.Checkpoint = anchorName(j.VMID, j.BID)
	}
	for _, disk := range j.Disks {
		dd := targets[disk.ID]
		target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", disk.ID, j.BID))
		info, err := qemuImgInfo(ctx, dd.Source)
		if err != nil {
			return err
		}
		push.Outputs[dd.Target] = target
		if j.DryRun {
			continue
		}
		// QEMU writes into targets we create (libvirt would refuse existing files otherwise).
		os.Remove(target)
		if _, err := hostjob.Run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", target, fmt.Sprint(info.VirtualSize)); err != nil {
			return err
		}
	}
	if j.DryRun {
		j.Log.Infof("dry run: push backup of %s %+v", j.DeployID, push)
		return nil
	}
	// The point in time is fixed when the job starts: thaw right after, not after the copy.
	if err := hypervisor.AtQuiescedPoint(ctx, hv, j, func() error { return d.BeginBackup(push) }); err != nil {
		d.AbortBackupJob()
		return fmt.Errorf("backup-begin on %s: %w", j.DeployID, err)
	}
	kind := "full"
	if since != "" {
		kind = "incremental from " + since
	}
	j.Log.Infof("live %s backup of VM %d started (disks %v)", kind, j.VMID, j.DiskIDs())
	hostjob.Hold(ctx, j.TmpDir, "export")
	return d.WaitBackup(ctx)
}

// dropAllAnchors removes every checkpoint of this VM and its bitmaps (also stale ones the
// hypervisor does not know), before a chain (re)starts.
func dropAllAnchors(d hypervisor.Domain, j *hostjob.Job, targets map[int]hypervisor.DomainDisk) error {
	ids, err := ownCheckpoints(d, j.VMID)
	if err != nil {
		return err
	}
	for _, n := range ids {
		if err := d.DeleteCheckpoint(anchorName(j.VMID, n)); err != nil {
			return err
		}
	}
	for _, disk := range j.Disks {
		file := targets[disk.ID].Source
		bitmaps, err := d.Bitmaps(file)
		if err != nil {
			return err
		}
		for _, b := range bitmaps {
			if _, ok := anchorID(j.VMID, b.Name); ok {
				if err := d.RemoveBitmap(file, b.Name); err != nil {
					return fmt.Errorf("cannot remove stale bitmap %s of disk %d: %w", b.Name, disk.ID, err)
				}
			}
		}
	}
	return nil
}

// ownCheckpoints lists this VM's checkpoint ids, ascending.
func ownCheckpoints(d hypervisor.Domain, vid int) ([]int, error) {
	names, err := d.Checkpoints()
	if err != nil {
		return nil, err
	}
	var ids []int
	for _, name := range names {
		if n, ok := anchorID(vid, name); ok {
			ids = append(ids, n)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

// liveAnchors applies keepAnchors to the checkpoints of the running domain.
func (f *File) liveAnchors(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	d, err := liveDomain(ctx, j, hv)
	if err != nil {
		return err
	}
	defer d.Close()
	ids, err := ownCheckpoints(d, j.VMID)
	if err != nil {
		return err
	}
	keep := keepAnchors(j)
	var errs []error
	for _, n := range ids { // oldest first: deleting a root drops its bitmap without merging
		if !keep(n) {
			errs = append(errs, d.DeleteCheckpoint(anchorName(j.VMID, n)))
		}
	}
	return errors.Join(errs...)
}

// repairLinks makes disk.<id> designate the layer the running VM writes to, when an earlier run
// was killed while the link pointed elsewhere (SNAPSHOT mode moves it): a restart must find
// every write.
func repairLinks(d hypervisor.Domain, j *hostjob.Job) error {
	all, err := d.Disks()
	if err != nil {
		return err
	}
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil || l.top < 0 {
			continue
		}
		for _, dd := range all {
			if dd.Target != disk.Target {
				continue
			}
			active, err1 := filepath.EvalSymlinks(dd.Source)
			linked, err2 := filepath.EvalSymlinks(disk.Path)
			if err1 != nil || err2 != nil || active == linked || filepath.Dir(active) != filepath.Clean(l.dir) {
				continue
			}
			n, err := strconv.Atoi(filepath.Base(active))
			if err != nil {
				continue
			}
			j.Log.Warnf("disk %d: link pointed at %s while the VM writes to %s: repaired", disk.ID, linked, active)
			if err := l.relink(n); err != nil {
				return err
			}
		}
	}
	return nil
}
