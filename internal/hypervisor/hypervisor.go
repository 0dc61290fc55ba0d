// Package hypervisor is one axis of the host side: what depends on the program that runs the VM
// (KVM through libvirt, LXC through the lxc tools) and not on where its disks are stored —
// whether the VM runs, fixing a consistent backup point (FS_FREEZE), and undoing what an
// interrupted run left on it. The other axis is internal/storage; a matrix row names one of each.
package hypervisor

import (
	"context"
	"errors"
	"fmt"

	"onebackup/internal/hostjob"
	"onebackup/internal/matrix"
)

// ErrNotRunning is a live backup's VM that no longer runs on this host (its QEMU died, it was
// destroyed): it holds no freeze, no backup job and no image open any more, so what is left of
// the run is cleaned up as after a power-off backup.
var ErrNotRunning = errors.New("the VM is not running on this host")

// Hypervisor is the hypervisor side of a matrix row.
type Hypervisor interface {
	Name() matrix.Hypervisor
	// Recover undoes what an interrupted run of this VM left on the running VM (a freeze, a
	// backup job); idempotent.
	Recover(ctx context.Context, j *hostjob.Job) error
	// CheckStopped fails when the VM still runs here: a power-off backup reads the disks
	// directly and would copy a moving target.
	CheckStopped(ctx context.Context, j *hostjob.Job) error
	// Quiesce fixes a consistent point for a live backup according to FS_FREEZE (journaled
	// first) and returns the undo, to call right after the storage fixed its point in time.
	Quiesce(ctx context.Context, j *hostjob.Job) (undo func() error, err error)
}

// AtQuiescedPoint runs fix (what fixes the backup point: a backup job start, a snapshot) with
// the VM quiesced according to FS_FREEZE, and always undoes the quiescing right after, so that
// the guest is frozen only for as long as fix takes. A cancelled ctx skips fix.
func AtQuiescedPoint(ctx context.Context, hv Hypervisor, j *hostjob.Job, fix func() error) error {
	undo, err := hv.Quiesce(ctx, j)
	if err != nil {
		return err
	}
	hostjob.Hold(ctx, j.TmpDir, "frozen")
	if err = ctx.Err(); err == nil {
		err = fix()
	}
	if uerr := undo(); uerr != nil {
		err = errors.Join(err, uerr)
	}
	return err
}

var sides hostjob.Registry[matrix.Hypervisor, Hypervisor]

// Register makes a hypervisor side available (called from its package's init).
func Register(name matrix.Hypervisor, f func() Hypervisor) { sides.Register(name, f) }

// Registered lists the hypervisor sides built into this binary.
func Registered() []matrix.Hypervisor { return sides.Names() }

// Get returns the hypervisor side of a row.
func Get(name matrix.Hypervisor) (Hypervisor, error) {
	hv, ok := sides.New(name)
	if !ok {
		return nil, fmt.Errorf("the %s hypervisor side is not built into this host binary", name)
	}
	return hv, nil
}

// ImageHolder is a hypervisor whose VM process keeps file disk images open (QEMU): while the VM
// runs only that process can read a consistent point of an image, track its changes (dirty
// bitmaps) or move it to another layer, so live backups of file disks go through it. LXC does
// not hold images; its live file backups are outside the matrix.
type ImageHolder interface {
	// Attach opens the running VM of the job.
	Attach(ctx context.Context, j *hostjob.Job) (Domain, error)
}

// DomainDisk is one disk of a running VM.
type DomainDisk struct {
	Target string
	Source string   // the image the VM writes to
	Format string   // its format
	Chain  []string // backing files, top first after Source
}

// Bitmap is a dirty bitmap of an image as the running VM sees it.
type Bitmap struct {
	Name         string
	Recording    bool
	Inconsistent bool // QEMU stopped while holding it: it cannot be trusted
}

// PushBackup is a backup job the VM's process writes itself: every disk of Outputs (target →
// new qcow2 file) as of the job start, only the clusters changed since checkpoint Since when
// set, and checkpoint Checkpoint created atomically with the backup point when set.
type PushBackup struct {
	Since      string
	Checkpoint string
	Outputs    map[string]string
}

// Domain is a running VM whose process holds its images.
type Domain interface {
	Close()
	// Disks lists the VM's disks (not CD-ROMs).
	Disks() ([]DomainDisk, error)
	// LayersIn lists the image files under dir that the VM uses (nothing when it does not run).
	LayersIn(dir string) []string

	// Bitmaps lists the bitmaps of the image node the VM uses for file (its top image).
	Bitmaps(file string) ([]Bitmap, error)
	// RemoveBitmap drops a bitmap of file's image node.
	RemoveBitmap(file, name string) error
	// Checkpoints lists the VM's checkpoint names; HasCheckpoint asks for one.
	Checkpoints() ([]string, error)
	HasCheckpoint(name string) bool
	// RedefineCheckpoint recreates the metadata of a checkpoint whose bitmaps survived (on the
	// selected targets) but which the hypervisor forgot (a transient VM restarted).
	RedefineCheckpoint(name string, selected map[string]bool) error
	// DeleteCheckpoint removes a checkpoint and its bitmaps (merging into its parent); gone is fine.
	DeleteCheckpoint(name string) error

	// AbortBackupJob stops a running backup job and waits until it is gone.
	AbortBackupJob() error
	// BeginBackup starts a push backup job; the point in time is fixed when it returns.
	BeginBackup(b PushBackup) error
	// WaitBackup waits for the job to complete; a cancelled ctx aborts it.
	WaitBackup(ctx context.Context) error

	// Snapshot switches the given targets to new empty layers (target → file backed by the
	// current image), atomically for all of them: the point in time of SNAPSHOT increments.
	Snapshot(layers map[string]string) error
	// CommitActive merges the active layer of target into base (a file of its chain) and
	// makes base active again.
	CommitActive(ctx context.Context, target, base string) error
	// Commit merges layer top into base below it, while the VM keeps running on a layer above.
	Commit(ctx context.Context, target, base, top string) error
	// CopyTo copies the whole chain of target into dst (an empty qcow2) and makes dst active.
	CopyTo(ctx context.Context, target, dst string) error
	// ChainName is the name the VM knows a file of target's chain by (it may be a link).
	ChainName(target, file string) string
	// SetBacking records backing as the backing file of the VM's active image file.
	SetBacking(file, backing string) error
}
