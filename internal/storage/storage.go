// Package storage is the other axis of the host side: what depends on where a VM's disks are
// stored (files in the VM directory, RBD images, logical volumes) and not on the hypervisor —
// finding the disks, anchoring a chain (bitmaps, snapshots), reading a point in time and the
// extents changed since an anchor. Each side lives in its own folder (file/, later rbd/ and
// lvm/); a matrix row pairs one with a hypervisor side (internal/hypervisor).
package storage

import (
	"context"
	"fmt"
	"onebackup/internal/qcow2"
	"os"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
)

// Storage is the storage side of a matrix row. Every method gets the row's hypervisor side:
// the storage asks it to quiesce the VM at the backup point, and, for disks the VM's process
// holds open (hypervisor.ImageHolder), to do the live work inside that process.
type Storage interface {
	Side() matrix.Side
	// Inspect completes a selected disk with what this host shows (its path, the format of
	// the image actually there); dryRun tolerates a disk that cannot be found.
	Inspect(ctx context.Context, vmDir string, d *hostjob.Disk, dryRun bool) error
	// Cleanup removes leftovers of an earlier failed or cancelled run of the same VM
	// (idempotent; never touches another VM's objects nor a layer the VM still uses).
	Cleanup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error
	// Backup writes disk.<id>.<BID> files into j.BackupDir (prebackup).
	Backup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error
	// Finish runs in postbackup: it applies the chain-anchor policy for j.Success and leaves
	// the VM on its original disks.
	Finish(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error
}

var sides hostjob.Registry[matrix.Side, Storage]

// Register makes a storage side available (called from its package's init).
func Register(side matrix.Side, f func() Storage) { sides.Register(side, f) }

// Registered lists the storage sides built into this binary.
func Registered() []matrix.Side { return sides.Names() }

// Get returns a storage side.
func Get(side matrix.Side) (Storage, error) {
	st, ok := sides.New(side)
	if !ok {
		return nil, fmt.Errorf("the %s storage side is not built into this host binary", side)
	}
	return st, nil
}

// Bridged is a storage side whose backup can be split between two hosts: the point in time
// fixed on the VM's host (which can quiesce the VM), the export on a bridge host of the backup
// datastore that reaches the same storage and uploads from there. Ceph images are reachable from
// any host of the cluster; files and LVs are not, so only the rbd side is Bridged. Point and
// Export in sequence on one host are Backup.
type Bridged interface {
	Storage
	// Point fixes the backup point of every selected disk (snapshots, the VM quiesced around
	// them as FS_FREEZE says).
	Point(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error
	// Export writes disk.<id>.<BID> files into j.BackupDir from the point Point fixed.
	Export(ctx context.Context, j *hostjob.Job) error
}

// RestoreTarget is one disk of an in-place restore (onevm restore): Top is the restored content,
// a local qcow2 whose backing chain (the full and the increments up to the point) is set.
type RestoreTarget struct {
	VMID  int
	VMDir string
	Disk  one.Disk
	Top   string
	Log   hostjob.Logger
}

// Restorer is a storage side that restores disks in place.
type Restorer interface {
	// PrepareRestore writes the disk's content at the restore point next to the disk, in the
	// disk's own format, without touching the disk.
	PrepareRestore(ctx context.Context, t RestoreTarget) (Restored, error)
}

// Restored is a disk's restored content, ready: Swap puts it in place of the disk (quickly,
// atomically where the storage allows), Discard drops it and leaves the disk as it was.
type Restored interface {
	Swap() error
	Discard()
	String() string // what is replaced, for the log
}

// ContentReader is a Restored whose content can be read back before the swap, to compare it
// with the backups it was rebuilt from (qcow2.ChainDigest).
type ContentReader interface {
	ContentDigest(clusterSize int64) (qcow2.Digest, qcow2.Geometry, error)
}

// RestoreTempSuffix marks what a restore creates next to the disks before the swap, so that a
// restore killed half-way can find and remove exactly that.
const RestoreTempSuffix = ".onebackup-restore"

// SwapDir replaces directory dst by src (the old one is removed once the new one is in place).
func SwapDir(src, dst string) error {
	old := dst + RestoreTempSuffix + ".old"
	os.RemoveAll(old)
	if _, err := os.Lstat(dst); err == nil {
		if err := os.Rename(dst, old); err != nil {
			return err
		}
	}
	if err := os.Rename(src, dst); err != nil {
		os.Rename(old, dst)
		return err
	}
	return os.RemoveAll(old)
}
