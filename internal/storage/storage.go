// Package storage is the interface every host-side backup adapter implements (KVM file disks
// here; Ceph, LVM thin and LXC later), and the plain description of one backup job that the
// host command builds from oned's VM XML after the matrix (internal/matrix) allowed it.
package storage

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"onebackup/internal/matrix"
)

// Disk is one selected disk of the VM.
type Disk struct {
	ID      int
	Target  string // libvirt target (vda)
	Path    string // <VM dir>/disk.<id>
	Format  string // qcow2 | raw (as found on the host)
	SizeMiB int64
	Storage matrix.Storage
}

// Job is one prebackup or postbackup run for one VM.
type Job struct {
	VMID      int
	DeployID  string // libvirt domain UUID (or name)
	VMDir     string
	BackupDir string // staging directory handed to the datastore backup action
	TmpDir    string // <VM dir>/tmp: scratch of this VM only
	Disks     []Disk // selected disks, in VM XML order
	Decision  matrix.Decision
	// Chain position: BID is the increment being taken (0 for FULL / chain start), PID the
	// parent (-1: this is a full).
	BID, PID int
	FSFreeze string // NONE | AGENT | SUSPEND (live only)
	// Success is the outcome the postbackup run was told (BACKUP_RESULT).
	Success bool
	DryRun  bool
	Log     Logger
}

// Full is true when this run produces a standalone full (FULL mode or chain start).
func (j *Job) Full() bool { return j.PID < 0 }

// Logger receives what the operator sees in the driver log.
type Logger interface {
	Infof(format string, args ...any)
	Warnf(format string, args ...any)
}

// Adapter is the storage-specific part of host-side backups.
type Adapter interface {
	// Name is the adapter name used by the matrix (matrix.Adapter*).
	Name() string
	// Cleanup removes leftovers of an earlier failed or cancelled run of the same VM
	// (idempotent; never touches another VM's objects nor a layer the VM still uses).
	Cleanup(ctx context.Context, j *Job) error
	// Backup writes disk.<id>.<BID> files into j.BackupDir (prebackup).
	Backup(ctx context.Context, j *Job) error
	// Finish runs in postbackup: it applies the chain-anchor policy for j.Success and leaves
	// the VM on its original disk chain.
	Finish(ctx context.Context, j *Job) error
}

var (
	mu       sync.Mutex
	adapters = map[string]func() Adapter{}
)

// Register makes an adapter available by name (called from the adapter's init).
func Register(name string, f func() Adapter) {
	mu.Lock()
	defer mu.Unlock()
	adapters[name] = f
}

// Get returns the adapter for a matrix decision.
func Get(name string) (Adapter, error) {
	mu.Lock()
	defer mu.Unlock()
	f, ok := adapters[name]
	if !ok {
		var have []string
		for n := range adapters {
			have = append(have, n)
		}
		sort.Strings(have)
		return nil, fmt.Errorf("storage adapter %q is allowed by the matrix but not built into this host binary (available: %v)", name, have)
	}
	return f(), nil
}
