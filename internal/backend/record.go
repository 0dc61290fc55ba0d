package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"onebackup/internal/agent"
	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// runRecord is the frontend's note of a running backup, kept in one.RunDir() while it runs, so
// that backup_cancel can stop exactly this backup (never processes matched by name).
type runRecord struct {
	PID      int    `json:"pid"`
	Start    string `json:"start"` // process start time: a recycled pid is not ours
	DeployID string `json:"deploy_id"`
	Host     string `json:"host"`
	Token    string `json:"token"`
	// Leftover is what the upload creates at the destination before it is complete (an rsync
	// backup directory): a killed run never removes it itself, the next backup of the VM does.
	Leftover string `json:"leftover,omitempty"`
	file     string
}

// LeftoverRemover is a store whose uploads leave something at the destination when killed
// (Upload.Leftover), which it can remove afterwards.
type LeftoverRemover interface {
	RemoveLeftover(ctx context.Context, leftover string) error
}

func recordPath(backend string, vmID int) string {
	return filepath.Join(one.RunDir(), fmt.Sprintf("%s-backup-%d.json", backend, vmID))
}

// startRecord writes the record of this backup. A record left by a backup that died is cleaned
// (its remote processes stopped); one of a backup still running makes this one fail.
func startRecord(ctx context.Context, rt *Runtime, store Store, b *Backup) (*runRecord, error) {
	file := recordPath(store.Backend(), b.Args.VMID)
	if old, err := readRecord(file); err == nil {
		if old.alive() {
			return nil, fmt.Errorf("a backup of VM %d is already running (pid %d)", b.Args.VMID, old.PID)
		}
		rt.Log.Infof("cleaning up after an earlier backup of VM %d that did not finish", b.Args.VMID)
		if err := rt.Runner.Kill(ctx, remote.Target{Host: old.Host}, old.Token); err != nil {
			rt.Log.Warnf("could not stop the processes of the earlier backup on %s: %v", old.Host, err)
		}
		if lr, ok := store.(LeftoverRemover); ok && old.Leftover != "" {
			if err := lr.RemoveLeftover(ctx, old.Leftover); err != nil {
				return nil, fmt.Errorf("cannot remove what the unfinished backup of VM %d left (%s): %w", b.Args.VMID, old.Leftover, err)
			}
			rt.Log.Infof("removed %s, left by the unfinished backup", old.Leftover)
		}
		os.Remove(file)
	}
	start, err := agent.ProcStart(os.Getpid())
	if err != nil {
		return nil, err
	}
	rec := &runRecord{PID: os.Getpid(), Start: start, DeployID: b.Args.DeployID, Host: b.VMHost.Host, Token: b.Token, file: file}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the run directory: %v", err)
	}
	data, _ := json.Marshal(rec)
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, fmt.Errorf("cannot record the running backup: %v", err)
	}
	return rec, os.Rename(tmp, file)
}

func readRecord(file string) (*runRecord, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	rec := &runRecord{file: file}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("corrupt run record %s: %v", file, err)
	}
	return rec, nil
}

func (r *runRecord) alive() bool {
	st, err := agent.ProcStart(r.PID)
	return err == nil && st == r.Start
}

func (r *runRecord) remove() { os.Remove(r.file) }

// note records what the upload is about to leave at the destination until it completes.
func (r *runRecord) note(leftover string) error {
	r.Leftover = leftover
	data, _ := json.Marshal(r)
	tmp := r.file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("cannot record the running backup: %v", err)
	}
	return os.Rename(tmp, r.file)
}

// CancelBackup stops the running backup of a VM (backup_cancel): SIGTERM to the backup action,
// which stops its upload and cleans up, then a check that nothing of it is left on the VM host.
// Nothing running is success.
func CancelBackup(ctx context.Context, rt *Runtime, backend string, vmID int, deployID string) error {
	file := recordPath(backend, vmID)
	rec, err := readRecord(file)
	if errors.Is(err, os.ErrNotExist) {
		rt.Log.Infof("no %s backup of VM %d is running", backend, vmID)
		return nil
	}
	if err != nil {
		return err
	}
	if rec.DeployID != deployID {
		return fmt.Errorf("the running backup of VM %d belongs to deploy id %s, not %s", vmID, rec.DeployID, deployID)
	}
	if rt.DryRun {
		rt.Planf("would send SIGTERM to the backup action (pid %d) and stop token %s on %s", rec.PID, rec.Token, rec.Host)
		return nil
	}
	if rec.alive() {
		syscall.Kill(rec.PID, syscall.SIGTERM)
		deadline := time.Now().Add(3 * time.Minute)
		for rec.alive() && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if rec.alive() {
			return fmt.Errorf("the backup action of VM %d (pid %d) did not stop", vmID, rec.PID)
		}
	}
	if err := rt.Runner.Kill(ctx, remote.Target{Host: rec.Host}, rec.Token); err != nil {
		return fmt.Errorf("cannot stop the upload of VM %d on %s: %w", vmID, rec.Host, err)
	}
	os.Remove(file)
	return nil
}
