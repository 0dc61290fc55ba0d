// Package file is the storage side of disks kept as files in the VM directory (qcow2 and raw;
// the qcow2, shared, ssh and local system datastores), for any hypervisor.
//
// Powered off, the files are read directly: a full is every allocated range of the disk, a CBT
// increment the ranges marked in the persistent bitmap one-<vid>-<PID> of the qcow2 (exported by
// qemu-nbd), both written by the storage sink (storage.WriteQcow2). Running, the files are held
// by the VM's process, so the hypervisor must offer hypervisor.ImageHolder (QEMU): the backup is
// a push job of QEMU whose point in time is the job start, the VM never leaves its own disk
// chain, and with CBT the checkpoint one-<vid>-<BID> is created by the same call. Without it
// (LXC) a live file backup is impossible, which the matrix says before anything runs.
package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/storage"
)

func init() {
	storage.Register(matrix.SideFile, func() storage.Storage { return &File{} })
}

// File implements storage.Storage for file disks.
type File struct{}

// Side is the matrix's name of this side.
func (*File) Side() matrix.Side { return matrix.SideFile }

// Inspect finds <VM dir>/disk.<id> and the format of the image there: the file on the host is
// the truth, whatever FORMAT says (W-19: a Ceph image copied to an ssh system datastore is raw).
func (*File) Inspect(ctx context.Context, vmDir string, d *hostjob.Disk, dryRun bool) error {
	d.Path = d.File(vmDir)
	d.Format = d.Disk.Format
	if _, err := os.Stat(d.Path); err != nil && dryRun {
		return nil
	}
	info, err := qemuImgInfo(ctx, d.Path)
	if err != nil {
		return err
	}
	d.Format = info.Format
	return nil
}

// liveDomain opens the running VM of a live backup through the hypervisor; a power-off backup
// has none (nil).
func liveDomain(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) (hypervisor.Domain, error) {
	if !j.Decision.Live {
		return nil, nil
	}
	holder, ok := hv.(hypervisor.ImageHolder)
	if !ok {
		return nil, fmt.Errorf("%s: live backups of file disks need a hypervisor that holds the images (%s does not)", j.Decision.Row.Name(), hv.Name())
	}
	return holder.Attach(ctx, j)
}

// Backup stages disk.<id>.<BID> for every selected disk.
func (f *File) Backup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	for _, d := range j.Disks {
		if j.CBT() && d.Format != "qcow2" {
			return fmt.Errorf("disk %d is %s: CBT increments need qcow2 disks (raw disks support full backups only)", d.ID, d.Format)
		}
		if j.SnapshotMode() && d.Format != "qcow2" {
			return fmt.Errorf("disk %d is %s: SNAPSHOT increments need qcow2 disks", d.ID, d.Format)
		}
	}
	if err := os.MkdirAll(j.TmpDir, 0o755); err != nil {
		return err
	}
	if !j.Decision.Live {
		if err := hv.CheckStopped(ctx, j); err != nil {
			return err
		}
	}
	if j.SnapshotMode() {
		return f.snapshotBackup(ctx, j, hv)
	}
	if j.Decision.Live {
		return f.liveBackup(ctx, j, hv)
	}
	return f.poweroffBackup(ctx, j)
}

// Cleanup undoes what a killed or cancelled run of this VM may have left: what the hypervisor
// side recovers (a freeze, a backup job), a qemu-nbd server, links moved by SNAPSHOT mode, the
// tmp dir. It refuses to remove a tmp dir that holds a layer
// the running VM uses.
func (f *File) Cleanup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	var errs []error
	// The VM first: a freeze or a backup job of an interrupted run.
	if err := hv.Recover(ctx, j); err != nil {
		errs = append(errs, err)
	}
	jr := hostjob.LoadJournal(j.TmpDir)
	if err := hostjob.StopRecorded(jr.NBDPid, jr.NBDStart); err != nil {
		errs = append(errs, err)
	}
	if jr.NBDSock != "" && strings.HasPrefix(jr.NBDSock, j.TmpDir+"/") {
		os.Remove(jr.NBDSock)
	}
	d, err := liveDomain(ctx, j, hv)
	if err != nil && !errors.Is(err, hypervisor.ErrNotRunning) {
		return errors.Join(append(errs, err)...)
	}
	defer closeDomain(d)
	if d != nil {
		if err := repairLinks(d, j); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return removeTmp(j, d)
}

func closeDomain(d hypervisor.Domain) {
	if d != nil {
		d.Close()
	}
}

// removeTmp deletes the VM's tmp dir unless a disk of the running domain lives in it.
func removeTmp(j *hostjob.Job, d hypervisor.Domain) error {
	if err := j.CheckTmpDir(); err != nil {
		return err
	}
	if d != nil {
		if used := d.LayersIn(j.TmpDir); len(used) > 0 {
			return fmt.Errorf("%s holds %v, used by the running VM: not removing it (commit the layer back first)", j.TmpDir, used)
		}
	}
	return os.RemoveAll(j.TmpDir)
}

// Finish applies the anchor policy (keep BID on success, PID on failure) and leaves the VM on
// its original chain with no helper process of ours.
func (f *File) Finish(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	hostjob.Hold(ctx, j.TmpDir, "postbackup")
	// Cancelling postbackup must not leave the VM half restored: finish regardless.
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if err := f.Cleanup(ctx, j, hv); err != nil {
		errs = append(errs, err)
	}
	switch {
	case j.SnapshotMode():
		errs = append(errs, f.snapshotFinish(ctx, j, hv))
	case j.Decision.Live:
		err := f.liveAnchors(ctx, j, hv)
		if errors.Is(err, hypervisor.ErrNotRunning) {
			// The VM died during the run: its checkpoints went with it, and the bitmaps in
			// the images are edited as after a power-off backup (the next backup finds
			// them inconsistent and starts a full inside the chain).
			j.Log.Warnf("VM %d no longer runs: its backup anchors are cleaned in the image files", j.VMID)
			err = f.poweroffAnchors(ctx, j)
		}
		errs = append(errs, err)
	default:
		errs = append(errs, f.poweroffAnchors(ctx, j))
	}
	return errors.Join(errs...)
}

// keepAnchors says which anchor ids survive postbackup.
func keepAnchors(j *hostjob.Job) func(n int) bool {
	switch {
	case !j.CBT():
		// FULL mode (or SNAPSHOT): no CBT chain state is kept at all.
		return func(int) bool { return false }
	case j.Success:
		return func(n int) bool { return n == j.BID }
	default:
		// Failed: the next try uses the same BID from PID; the partial BID anchor goes (its
		// changes are merged into PID by libvirt, or still recorded by PID's bitmap).
		return func(n int) bool { return n == j.PID }
	}
}
