package kvmfile

import (
	"context"
	"encoding/xml"
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

// Live backups: the push backup job with its checkpoint, the anchors that keep the chain of
// increments usable, and the repair of what an interrupted run left on a running VM.

// liveCleanup undoes what an interrupted live run of this VM left on the domain, from its
// journal: a backup job still running, disk links, a freeze or a suspend.
func (a *Adapter) liveCleanup(ctx context.Context, j *storage.Job, jr journal) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	var errs []error
	if err := d.abortBackupJob(); err != nil {
		errs = append(errs, err)
	}
	if err := repairLinks(d, j); err != nil {
		errs = append(errs, err)
	}
	if jr.Frozen != "" {
		if err := thaw(d, jr.Frozen); err != nil && jr.Frozen == "SUSPEND" {
			errs = append(errs, err)
		} else {
			if err != nil {
				// A guest agent that does not answer cannot hold a freeze either.
				j.Log.Warnf("VM %d: thaw after an earlier run: %v", j.VMID, err)
			}
			j.Log.Warnf("VM %d was left %s by an earlier run: thawed", j.VMID, map[string]string{"AGENT": "frozen", "SUSPEND": "suspended"}[jr.Frozen])
			jr.Frozen = ""
			saveJournal(j.TmpDir, jr)
		}
	}
	return errors.Join(errs...)
}

// parentUsable says whether checkpoint PID can serve as the base of an increment, redefining
// its libvirt metadata when only the bitmaps survived (transient domains forget checkpoints at
// every power cycle). The reason is set when CBT was lost.
func (d *domain) parentUsable(j *storage.Job, targets map[int]domDisk) (bool, string) {
	name := anchorName(j.VMID, j.PID)
	for _, disk := range j.Disks {
		node, err := d.formatNode(targets[disk.ID].Source)
		if err != nil {
			return false, err.Error()
		}
		found := false
		for _, b := range node.Bitmaps {
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
	if cp, err := d.dom.CheckpointLookupByName(name, 0); err == nil {
		cp.Free()
		return true, ""
	}
	all, err := d.disks()
	if err != nil {
		return false, err.Error()
	}
	selected := map[string]int{}
	for _, disk := range j.Disks {
		selected[targets[disk.ID].Target] = disk.ID
	}
	cpXML := strings.Replace(checkpointXMLAll(name, all, selected), "</name>", fmt.Sprintf("</name><creationTime>%d</creationTime>", time.Now().Unix()), 1)
	cp, err := d.dom.CreateCheckpointXML(cpXML, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE)
	if err != nil {
		return false, fmt.Sprintf("checkpoint %s metadata is gone and cannot be redefined: %v", name, err)
	}
	cp.Free()
	j.Log.Infof("checkpoint %s redefined from the bitmaps in the disk images", name)
	return true, ""
}

// liveBackup takes a push-mode backup: full (FULL mode, chain start, or CBT lost) or an
// increment from checkpoint PID, creating checkpoint BID atomically with the backup point.
func (a *Adapter) liveBackup(ctx context.Context, j *storage.Job) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	all, err := d.disks()
	if err != nil {
		return err
	}
	targets := map[int]domDisk{}
	for _, disk := range j.Disks {
		var found *domDisk
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
	if err := d.abortBackupJob(); err != nil {
		return err
	}

	incremental := ""
	if cbt(j) {
		if j.PID >= 0 {
			// A failed try of this BID left its checkpoint: drop it (libvirt merges it into PID).
			if err := d.deleteCheckpoint(anchorName(j.VMID, j.BID)); err != nil {
				return err
			}
			if ok, why := d.parentUsable(j, targets); ok {
				incremental = anchorName(j.VMID, j.PID)
			} else {
				j.Log.Warnf("CBT lost for VM %d (%s): taking a full backup inside the chain as increment %d", j.VMID, why, j.BID)
			}
		}
		if incremental == "" {
			if err := a.dropAllAnchors(d, j, targets); err != nil {
				return err
			}
		}
	}

	var bx strings.Builder
	bx.WriteString("<domainbackup mode='push'>")
	if incremental != "" {
		fmt.Fprintf(&bx, "<incremental>%s</incremental>", incremental)
	}
	bx.WriteString("<disks>")
	selected := map[string]int{}
	for _, disk := range j.Disks {
		selected[disk.Target] = disk.ID
	}
	for _, dd := range all {
		id, ok := selected[dd.Target]
		if !ok {
			fmt.Fprintf(&bx, "<disk name='%s' backup='no'/>", dd.Target)
			continue
		}
		target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", id, j.BID))
		info, err := qemuImgInfo(ctx, dd.Source)
		if err != nil {
			return err
		}
		os.Remove(target)
		if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", target, fmt.Sprint(info.VirtualSize)); err != nil {
			return err
		}
		fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file'><target file='%s'/><driver type='qcow2'/></disk>", dd.Target, xmlEscape(target))
	}
	bx.WriteString("</disks></domainbackup>")
	cpx := ""
	if cbt(j) {
		cpx = checkpointXMLAll(anchorName(j.VMID, j.BID), all, selected)
	}

	if j.DryRun {
		j.Log.Infof("dry run: backup-begin %s\n%s\n%s", j.DeployID, bx.String(), cpx)
		return nil
	}
	undo, err := freeze(ctx, d, j)
	if err != nil {
		return err
	}
	hold(ctx, j.TmpDir, "frozen")
	if ctx.Err() != nil {
		err = ctx.Err()
	} else {
		err = d.dom.BackupBegin(bx.String(), cpx, libvirt.DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
	}
	// The point in time is fixed when the job starts: thaw now, not after the copy.
	if uerr := undo(); uerr != nil {
		err = errors.Join(err, uerr)
	}
	if err != nil {
		d.abortBackupJob()
		return fmt.Errorf("backup-begin on %s: %v", j.DeployID, err)
	}
	kind := "full"
	if incremental != "" {
		kind = "incremental from " + incremental
	}
	j.Log.Infof("live %s backup of VM %d started (disks %v)", kind, j.VMID, diskIDs(j))
	hold(ctx, j.TmpDir, "export")
	return d.waitJob(ctx)
}

func checkpointXMLAll(name string, all []domDisk, selected map[string]int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<domaincheckpoint><name>%s</name><disks>", name)
	for _, dd := range all {
		if _, ok := selected[dd.Target]; ok {
			fmt.Fprintf(&b, "<disk name='%s' checkpoint='bitmap'/>", dd.Target)
		} else {
			fmt.Fprintf(&b, "<disk name='%s' checkpoint='no'/>", dd.Target)
		}
	}
	b.WriteString("</disks></domaincheckpoint>")
	return b.String()
}

func diskIDs(j *storage.Job) []int {
	var ids []int
	for _, d := range j.Disks {
		ids = append(ids, d.ID)
	}
	return ids
}

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// dropAllAnchors removes every checkpoint of this VM and its bitmaps (also stale ones libvirt
// does not know), before a chain (re)starts.
func (a *Adapter) dropAllAnchors(d *domain, j *storage.Job, targets map[int]domDisk) error {
	ids, err := d.checkpoints(j.VMID)
	if err != nil {
		return err
	}
	for _, n := range ids {
		if err := d.deleteCheckpoint(anchorName(j.VMID, n)); err != nil {
			return err
		}
	}
	for _, disk := range j.Disks {
		node, err := d.formatNode(targets[disk.ID].Source)
		if err != nil {
			return err
		}
		for _, b := range node.Bitmaps {
			if _, ok := anchorID(j.VMID, b.Name); ok {
				if err := d.qmp("block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": b.Name}, nil); err != nil {
					return fmt.Errorf("cannot remove stale bitmap %s of disk %d: %v", b.Name, disk.ID, err)
				}
			}
		}
	}
	return nil
}

// liveAnchors applies keepAnchors to the checkpoints of the running domain.
func (a *Adapter) liveAnchors(ctx context.Context, j *storage.Job) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	ids, err := d.checkpoints(j.VMID)
	if err != nil {
		return err
	}
	keep := keepAnchors(j)
	var errs []error
	for _, n := range ids { // oldest first: deleting a root drops its bitmap without merging
		if !keep(n) {
			errs = append(errs, d.deleteCheckpoint(anchorName(j.VMID, n)))
		}
	}
	return errors.Join(errs...)
}

// repairLinks makes disk.<id> designate the layer the running VM writes to, when an earlier run
// was killed while the link pointed elsewhere (SNAPSHOT mode moves it): a restart must find
// every write.
func repairLinks(d *domain, j *storage.Job) error {
	all, err := d.disks()
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
