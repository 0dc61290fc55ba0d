// Package hostjob is what both axes of the host side share: one backup run of one VM (the Job),
// its disks as found on this host, the journal of live state changes, and the helpers to run
// tools. The hypervisor side (internal/hypervisor/...) and the storage side
// (internal/storage/...) both work on a Job; neither imports the other's implementations.
package hostjob

import (
	"fmt"
	"path/filepath"

	"onebackup/internal/matrix"
	"onebackup/internal/one"
)

// Disk is one selected disk of the VM: oned's description plus what this host found.
type Disk struct {
	one.Disk
	Kind matrix.Storage // the matrix's kind of this disk
	// Path is the disk in the VM directory (<VM dir>/disk.<id>); for file disks the image,
	// for LVM disks a link to the LV.
	Path string
	// Format is the image format found on the host, which wins over the XML's FORMAT for file
	// disks (a Ceph image copied to an ssh system datastore is a raw file, W-19).
	Format string
}

// Job is one prebackup or postbackup run for one VM.
type Job struct {
	VMID      int
	DeployID  string // libvirt domain UUID or name; the LXC container name
	VMDir     string
	BackupDir string // staging directory handed to the datastore backup action
	TmpDir    string // <VM dir>/tmp: scratch of this VM only
	Disks     []Disk // selected disks, in VM XML order
	Decision  matrix.Decision
	// Chain position: BID is the increment being taken (0 for FULL / chain start), PID the
	// parent (-1: this is a full).
	BID, PID int
	FSFreeze string // NONE | AGENT | SUSPEND (live only)
	// ChainFormat is the FORMAT oned records for the image of the chain being continued: "rbd"
	// for a Ceph chain OpenNebula ≤ 7.0 started as .rbd2 + .rbdiff files, which goes on in
	// that format; "" or "raw" for qcow2 chains.
	ChainFormat string
	// SystemDS is the VM's system datastore id (where fs_lvm_ssh keeps the VM's LVs); LVMDS the
	// image datastore of the VM's first disk on the thin-only lvm driver, where that driver
	// keeps the VM's volatile disks (-1: none).
	SystemDS, LVMDS int
	SystemTM        string // the system datastore's TM_MAD
	// Success is the outcome the postbackup run was told (BACKUP_RESULT).
	Success bool
	DryRun  bool
	Log     Logger
}

// Full is true when this run produces a standalone full (FULL mode or chain start).
func (j *Job) Full() bool { return j.PID < 0 }

// KeptAnchor is the increment whose chain anchor (snapshot) must remain after postbackup: the one
// oned will continue the chain from — BID after a successful upload, PID after a failure, -1
// (none) when a chain start failed or in FULL mode, which keeps no chain. Storage sides that
// anchor chains with snapshots (Ceph, LVM) remove every other anchor, so that a failed upload
// is retried from an anchor that is still there.
func (j *Job) KeptAnchor() int {
	switch {
	case !j.Decision.Incremental:
		return -1
	case j.Success:
		return j.BID
	}
	return j.PID
}

// CheckTmpDir refuses to let a cleanup remove anything but <VM dir>/tmp.
func (j *Job) CheckTmpDir() error {
	if j.TmpDir == "" || filepath.Dir(j.TmpDir) != filepath.Clean(j.VMDir) {
		return fmt.Errorf("refusing to remove %q: not <VM dir>/tmp", j.TmpDir)
	}
	return nil
}

// CBT is an incremental run in INCREMENT_MODE=CBT.
func (j *Job) CBT() bool { return j.Decision.Incremental && j.Decision.IncrementMode == matrix.CBT }

// SnapshotMode is an incremental run in INCREMENT_MODE=SNAPSHOT.
func (j *Job) SnapshotMode() bool {
	return j.Decision.Incremental && j.Decision.IncrementMode == matrix.Snapshot
}

// DiskIDs lists the selected disks' ids.
func (j *Job) DiskIDs() []int {
	var ids []int
	for _, d := range j.Disks {
		ids = append(ids, d.ID)
	}
	return ids
}

// Logger receives what the operator sees in the driver log.
type Logger interface {
	Infof(format string, args ...any)
	Warnf(format string, args ...any)
}
