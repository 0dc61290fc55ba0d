package backend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"onebackup/internal/agent"
	"onebackup/internal/checksum"
	"onebackup/internal/one"
	"onebackup/internal/remote"
	"onebackup/internal/validate"
)

// Backup is one backup action: where the staged files are and what they are.
type Backup struct {
	Args    *one.BackupArgs
	DSID    int
	VMHost  remote.Target // the VM's host, or LAST_BRIDGE
	Staging string        // cleaned staging directory on VMHost
	Files   []agent.File  // the staged files, sorted by name
	Token   string        // tracks this backup's processes on VMHost
}

// Location is where this VM's backups go.
func (b *Backup) Location() Location { return Location{VMID: b.Args.VMID, JobID: b.Args.JobID} }

// Paths returns the absolute paths of the staged disk.* files followed by vm.xml and, when the
// host recorded one, the checksum record.
func (b *Backup) Paths() []string {
	var out []string
	sums := false
	for _, f := range b.Files {
		if strings.HasPrefix(f.Name, "disk.") {
			out = append(out, path.Join(b.Staging, f.Name))
		}
		sums = sums || f.Name == checksum.File
	}
	out = append(out, path.Join(b.Staging, "vm.xml"))
	if sums {
		out = append(out, path.Join(b.Staging, checksum.File))
	}
	return out
}

// Format is "rbd" for legacy Ceph chains (.rbd2 / .rbdiff files), else "raw" (qcow2 files).
func (b *Backup) Format() string {
	for _, f := range b.Files {
		if strings.HasSuffix(f.Name, ".rbd2") || strings.HasSuffix(f.Name, ".rbdiff") {
			return "rbd"
		}
	}
	return "raw"
}

// Result is what backup reports to oned.
type Result struct {
	ID     string
	Size   int64
	Format string
}

// ErrCancelled is returned when the backup was stopped by SIGTERM or backup_cancel.
var ErrCancelled = errors.New("backup cancelled")

// RunBackup performs the backup action: find the staged files, prepare the destination, upload
// from the VM host, and on failure or cancellation stop this backup's processes and clean the
// destination.
func RunBackup(ctx context.Context, rt *Runtime, open Opener, msg *one.Message, args *one.BackupArgs) (*Result, error) {
	ds, err := msg.Datastore()
	if err != nil {
		return nil, err
	}
	b := &Backup{Args: args}
	if b.DSID, err = ds.ID(); err != nil {
		return nil, err
	}
	vm, err := msg.VM()
	if err != nil {
		return nil, err
	}
	if id, err := vm.ID(); err != nil {
		return nil, err
	} else if id != args.VMID {
		return nil, fmt.Errorf("VM ID in the message (%d) does not match the VM id argument %d", id, args.VMID)
	}
	b.VMHost = remote.Target{Host: args.Host}
	if bridge := vm.LastBridge(); bridge != "" {
		if err := validate.Host("LAST_BRIDGE", bridge); err != nil {
			return nil, err
		}
		// Only Ceph VMs are staged on the bridge; file and LVM datastores stage on the VM's host,
		// where prebackup ran (spec host-backup W-16).
		if tm := vm.SystemTM(); tm == "ceph" {
			b.VMHost.Host = bridge
		} else {
			rt.Log.Infof("LAST_BRIDGE %s not used: VMs on %q system datastores are staged on their host %s", bridge, tm, args.Host)
		}
	}
	conf, err := one.LoadConf(one.DatastoreConfPath())
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", one.DatastoreConfPath(), err)
	}
	if b.Staging, err = one.StagingDir(conf, args.VMDir, args.VMID); err != nil {
		return nil, err
	}
	store, err := open(ds, rt)
	if err != nil {
		return nil, err
	}
	rt.Planf("backup of VM %d from %s:%s to %s datastore %d", args.VMID, b.VMHost, b.Staging, store.Backend(), b.DSID)

	if b.Files, err = rt.List(ctx, b.VMHost, b.Staging); err != nil {
		return nil, fmt.Errorf("cannot list the staged backup %s on %s: %w", b.Staging, b.VMHost, err)
	}
	if err := checkStaged(b); err != nil {
		return nil, err
	}
	if !slices.ContainsFunc(b.Files, func(f agent.File) bool { return f.Name == checksum.File }) {
		rt.Log.Warnf("the staged backup of VM %d in %s has no %s: this backup will not be verifiable (was it staged by an older onebackup-host?)", args.VMID, b.Staging, checksum.File)
	}
	b.Token = fmt.Sprintf("%s-backup-%d-%s", store.Backend(), args.VMID, randomHex(4))

	var rec *runRecord
	if !rt.DryRun {
		if rec, err = startRecord(ctx, rt, store, b); err != nil {
			return nil, err
		}
		defer rec.remove()
	}
	up, err := store.PrepareUpload(ctx, b)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ErrCancelled
		}
		return nil, err
	}
	if rec != nil && up.Leftover != "" {
		if err := rec.note(up.Leftover); err != nil {
			if up.Cleanup != nil {
				up.Cleanup(context.WithoutCancel(ctx))
			}
			return nil, err
		}
	}
	up.Cmd.Token = b.Token
	up.Cmd.Stdout = remote.LineWriter(up.OnLine)
	rt.Log.Infof("uploading %d staged files of VM %d from %s", len(b.Files), args.VMID, b.VMHost)
	_, err = rt.Run(ctx, up.Cmd, true)
	if rt.DryRun {
		return nil, nil
	}
	if err == nil {
		id, size, rerr := up.Result()
		if rerr == nil {
			return &Result{ID: id, Size: size, Format: b.Format()}, nil
		}
		err = rerr
	}
	// Failed or cancelled: stop this backup's own processes, then clean the destination.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	cleanupErr := rt.Runner.Kill(cctx, b.VMHost, b.Token)
	if up.Cleanup != nil {
		cleanupErr = errors.Join(cleanupErr, up.Cleanup(cctx))
	}
	if ctx.Err() == nil && up.Explain != nil {
		err = up.Explain(cctx, err)
	}
	if ctx.Err() != nil {
		err = ErrCancelled
	} else if explained := explainOwnCredentials(err, cleanupErr, up, store.Backend()); explained != nil {
		// The cleanup ran into the same missing key: the one cause is what the operator needs.
		return nil, explained
	}
	if cleanupErr != nil {
		return nil, fmt.Errorf("%w (cleanup also failed: %v)", err, cleanupErr)
	}
	return nil, err
}

func checkStaged(b *Backup) error {
	disks, vmxml := 0, false
	for _, f := range b.Files {
		switch {
		case f.Name == "vm.xml":
			vmxml = true
		case strings.HasPrefix(f.Name, "disk."):
			disks++
		}
	}
	if disks == 0 {
		return fmt.Errorf("no disk.* files in %s on %s: nothing was staged for this backup (did prebackup run?)", b.Staging, b.VMHost)
	}
	if !vmxml {
		return fmt.Errorf("no vm.xml in %s on %s: the staged backup is incomplete", b.Staging, b.VMHost)
	}
	return nil
}

func randomHex(n int) string {
	buf := make([]byte, n)
	if _, err := rand.Read(buf); err != nil {
		panic(err)
	}
	return hex.EncodeToString(buf)
}

// RandomHex returns 2n random hex characters.
func RandomHex(n int) string { return randomHex(n) }
