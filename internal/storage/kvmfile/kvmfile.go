// Package kvmfile is the storage adapter for KVM VMs with file disks (qcow2 and raw) on the
// qcow2/shared/ssh/local system datastores. Live backups use libvirt push-mode backup jobs
// (backup-begin with --reuse-external targets we create): the point in time is the job start,
// the VM never leaves its own disk chain (no overlays to commit back), and with INCREMENT_MODE=CBT
// the checkpoint one-<vid>-<BID> is created by the same call (atomic with the backup point).
// Power-off backups use qemu-img convert (full) and qemu-nbd + nbdinfo + qemu-io (CBT
// increments from persistent bitmaps).
package kvmfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"onebackup/internal/matrix"
	"onebackup/internal/storage"
)

func init() {
	storage.Register(matrix.AdapterKVMFile, func() storage.Adapter { return &Adapter{} })
}

// Adapter implements storage.Adapter for KVM file disks.
type Adapter struct{}

// Name is the matrix adapter name.
func (a *Adapter) Name() string { return matrix.AdapterKVMFile }

func cbt(j *storage.Job) bool {
	return j.Decision.Incremental && j.Decision.IncrementMode == matrix.CBT
}

// Backup stages disk.<id>.<BID> for every selected disk.
func (a *Adapter) Backup(ctx context.Context, j *storage.Job) error {
	for _, d := range j.Disks {
		if cbt(j) && d.Format != "qcow2" {
			return fmt.Errorf("disk %d is %s: CBT increments need qcow2 disks (raw disks support full backups only)", d.ID, d.Format)
		}
	}
	if err := os.MkdirAll(j.TmpDir, 0o755); err != nil {
		return err
	}
	if snapshotMode(j) {
		for _, d := range j.Disks {
			if d.Format != "qcow2" {
				return fmt.Errorf("disk %d is %s: SNAPSHOT increments need qcow2 disks", d.ID, d.Format)
			}
		}
		return a.snapshotBackup(ctx, j)
	}
	if j.Decision.Live {
		return a.liveBackup(ctx, j)
	}
	return a.poweroffBackup(ctx, j)
}

// Cleanup undoes what a killed or cancelled run of this VM may have left: a running backup job
// on the domain, a frozen or suspended guest, a qemu-nbd server, the tmp dir. It refuses to
// remove a tmp dir that holds a layer the running VM uses.
func (a *Adapter) Cleanup(ctx context.Context, j *storage.Job) error {
	jr := loadJournal(j.TmpDir)
	var errs []error
	if err := stopRecorded(jr.NBDPid, jr.NBDStart); err != nil {
		errs = append(errs, err)
	}
	if jr.NBDSock != "" && strings.HasPrefix(jr.NBDSock, j.TmpDir+"/") {
		os.Remove(jr.NBDSock)
	}
	if j.Decision.Live {
		if err := a.liveCleanup(ctx, j, jr); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return removeTmp(j)
}

// removeTmp deletes the VM's tmp dir unless a disk of the running domain lives in it.
func removeTmp(j *storage.Job) error {
	if j.TmpDir == "" || filepath.Dir(j.TmpDir) != filepath.Clean(j.VMDir) {
		return fmt.Errorf("refusing to remove %q: not <VM dir>/tmp", j.TmpDir)
	}
	if used := layersIn(j, j.TmpDir); len(used) > 0 {
		return fmt.Errorf("%s holds %v, used by the running VM: not removing it (commit the layer back first)", j.TmpDir, used)
	}
	return os.RemoveAll(j.TmpDir)
}

// Finish applies the anchor policy (keep BID on success, PID on failure) and leaves the VM on
// its original chain with no job, freeze or helper process of ours.
func (a *Adapter) Finish(ctx context.Context, j *storage.Job) error {
	hold(ctx, j.TmpDir, "postbackup")
	// Cancelling postbackup must not leave the VM half restored: finish regardless.
	ctx = context.WithoutCancel(ctx)
	var errs []error
	if err := a.Cleanup(ctx, j); err != nil {
		errs = append(errs, err)
	}
	if snapshotMode(j) {
		errs = append(errs, a.snapshotFinish(ctx, j))
	} else if j.Decision.Live {
		errs = append(errs, a.liveAnchors(ctx, j))
	} else {
		errs = append(errs, a.poweroffAnchors(ctx, j))
	}
	return errors.Join(errs...)
}

func snapshotMode(j *storage.Job) bool {
	return j.Decision.Incremental && j.Decision.IncrementMode == matrix.Snapshot
}

// keepAnchors says which anchor ids survive postbackup.
func keepAnchors(j *storage.Job) func(n int) bool {
	switch {
	case !cbt(j):
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
