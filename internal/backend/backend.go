// Package backend holds what every backup datastore backend shares: the Store interface a backend
// implements, the runtime (command runner, dry run, logging) and the actions built on top of a
// Store (backup with cancellation, rm, stat, ls, monitor).
package backend

import (
	"context"
	"fmt"
	"io"
	"onebackup/internal/chain"

	"github.com/sirupsen/logrus"

	"onebackup/internal/agent"
	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// Location names the backups of one VM inside a datastore: a restic repository (per VM or per
// backup job) or an rsync directory (per VM).
type Location struct {
	VMID  int
	JobID string // "" when not backed up by a backup job
}

// Usage is a datastore's capacity in MiB.
type Usage struct{ UsedMB, TotalMB, FreeMB int64 }

// Store is one configured backup datastore (its attributes already validated).
type Store interface {
	// Backend is "restic" or "rsync" (the URL scheme).
	Backend() string
	// PrepareUpload readies the destination of a backup and returns the upload to run on the VM host.
	PrepareUpload(ctx context.Context, b *Backup) (*Upload, error)
	// Files lists the files of a stored backup as absolute paths (the paths URLs carry).
	Files(ctx context.Context, loc Location, snap string) ([]string, error)
	// ReadVMXML returns the stored vm.xml (base64 text) of the backup that holds diskPath.
	ReadVMXML(ctx context.Context, loc Location, snap, diskPath string) ([]byte, error)
	// Remove deletes stored backups; ids that do not exist are skipped.
	Remove(ctx context.Context, loc Location, snaps []string) error
	// Usage reports the datastore's capacity.
	Usage(ctx context.Context) (Usage, error)
}

// FileReader is a Store that can stream a stored file (restore, downloaders, flatten).
type FileReader interface {
	// ReadFile writes the file stored at path in backup snap to w.
	ReadFile(ctx context.Context, loc Location, snap, path string, w io.Writer) error
}

// StoredFile is one stored file of a restore point.
type StoredFile struct{ Snap, Path string }

// ChainLister is a Store that lists the stored files of one disk along a URL's chain, oldest
// first, so that an in-place restore can fetch them one by one and merge them on the VM's host
// (no merged copy on the frontend or the backup server).
type ChainLister interface {
	FileReader
	ChainFiles(ctx context.Context, u chain.URL, loc Location) ([]StoredFile, error)
}

// Upload is the program that copies the staged files of one backup to the datastore.
type Upload struct {
	Cmd    remote.Cmd
	Server string // the backup server the upload connects to, for messages
	// SSH: the upload logs in to Server over ssh (SFTP, rsync), not with keys of its own (S3).
	SSH bool
	// OnLine sees every stdout line while the upload runs (progress, result).
	OnLine func(line []byte)
	// Result returns the backup id and the size in bytes once the upload succeeded.
	Result func() (id string, size int64, err error)
	// Cleanup removes what a failed or cancelled upload left at the destination.
	Cleanup func(ctx context.Context) error
	// Leftover names what the upload has already created at the destination (for the store's
	// RemoveLeftover, should this process be killed before Cleanup can run).
	Leftover string
	// Explain, when set, turns the failure of Cmd into what the operator needs to know (who
	// holds a lock, why a connection failed).
	Explain func(ctx context.Context, err error) error
}

// Runtime is how actions run: the runner, the dry-run switch and the log.
type Runtime struct {
	Runner *remote.Runner
	DryRun bool
	Plan   io.Writer // dry runs print their plan here
	Log    *logrus.Logger
	// Progress, when set, receives the fraction done of long transfers (a person's terminal).
	Progress func(done float64, detail string)
}

// Run runs c unless this is a dry run and c changes something; read-only commands run in dry
// runs too, so that the plan shows real hosts, files and repositories.
func (rt *Runtime) Run(ctx context.Context, c remote.Cmd, mutates bool) (*remote.Result, error) {
	if rt.DryRun {
		verb := "run"
		if mutates {
			verb = "would run"
		}
		fmt.Fprintf(rt.Plan, "%s %s\n", verb, rt.Runner.Describe(c))
		if mutates {
			return &remote.Result{}, nil
		}
	}
	rt.Log.Debugf("running %s", rt.Runner.Describe(c))
	return rt.Runner.Run(ctx, c)
}

// List lists a directory on a host (read-only).
func (rt *Runtime) List(ctx context.Context, t remote.Target, dir string) ([]agent.File, error) {
	if rt.DryRun {
		fmt.Fprintf(rt.Plan, "list %s on %s\n", dir, t)
	}
	return rt.Runner.List(ctx, t, dir)
}

// Planf prints a line of the plan in dry runs.
func (rt *Runtime) Planf(format string, args ...any) {
	if rt.DryRun {
		fmt.Fprintf(rt.Plan, format+"\n", args...)
	}
}

// Opener validates a datastore's attributes and returns its Store.
type Opener func(ds *one.Datastore, rt *Runtime) (Store, error)
