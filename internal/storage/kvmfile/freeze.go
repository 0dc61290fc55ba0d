package kvmfile

// FS_FREEZE around the backup point: the guest agent's fsfreeze, or suspending the VM.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"onebackup/internal/storage"
)

// freeze applies FS_FREEZE (recorded in the journal first) and returns the undo.
func freeze(ctx context.Context, d *domain, j *storage.Job) (func() error, error) {
	mode := strings.ToUpper(j.FSFreeze)
	if mode != "AGENT" && mode != "SUSPEND" {
		return func() error { return nil }, nil
	}
	jr := loadJournal(j.TmpDir)
	jr.Frozen = mode
	if err := saveJournal(j.TmpDir, jr); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		if mode == "AGENT" {
			done <- d.dom.FSFreeze(nil, 0)
		} else {
			done <- d.dom.Suspend()
		}
	}()
	var err error
	freezeFailed := false
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		err = errors.New("timed out after 60 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	undo := func() error {
		if err := thaw(d, mode); err != nil && !(mode == "AGENT" && freezeFailed) {
			return err
		}
		jr := loadJournal(j.TmpDir)
		jr.Frozen = ""
		return saveJournal(j.TmpDir, jr)
	}
	if err != nil {
		freezeFailed = true
		undo() // a freeze that half happened (or timed out late) must not stay
		return nil, fmt.Errorf("FS_FREEZE=%s failed on VM %d (set FS_FREEZE=NONE to back up without freezing): %v", mode, j.VMID, err)
	}
	j.Log.Infof("VM %d %s for the backup point", j.VMID, map[string]string{"AGENT": "filesystems frozen", "SUSPEND": "suspended"}[mode])
	return undo, nil
}

func thaw(d *domain, mode string) error {
	switch mode {
	case "AGENT":
		if err := d.dom.FSThaw(nil, 0); err != nil {
			return fmt.Errorf("cannot thaw the guest filesystems: %v", err)
		}
	case "SUSPEND":
		st, _, err := d.dom.GetState()
		if err == nil && st != libvirt.DOMAIN_PAUSED {
			return nil
		}
		if err := d.dom.Resume(); err != nil {
			return fmt.Errorf("cannot resume the VM: %v", err)
		}
	}
	return nil
}
