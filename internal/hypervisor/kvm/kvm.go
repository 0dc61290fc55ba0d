// Package kvm is the KVM hypervisor side: libvirt (through libvirt.org/go/libvirt) and the QEMU
// behind it. It finds the VM's domain, fixes a consistent backup point (FS_FREEZE AGENT through
// the guest agent, SUSPEND by pausing the VM), and — because QEMU holds the VM's file images
// open — runs what live file backups need inside QEMU: push backup jobs, checkpoints and their
// dirty bitmaps, external snapshots, block commits and copies.
package kvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
)

func init() {
	hypervisor.Register(matrix.KVM, func() hypervisor.Hypervisor { return &KVM{} })
}

// KVM implements hypervisor.Hypervisor and hypervisor.ImageHolder.
type KVM struct{}

// Name is the matrix's name of this side.
func (*KVM) Name() matrix.Hypervisor { return matrix.KVM }

// libvirtURI is $LIBVIRT_URI, else LIBVIRT_URI from the host's kvmrc (read on the host, not the
// frontend: W-18), else qemu:///system.
func libvirtURI() string {
	if u := os.Getenv("LIBVIRT_URI"); u != "" {
		return u
	}
	kvmrc, _ := one.LoadConf(filepath.Join(one.HostRemotesDir(), "etc/vmm/kvm/kvmrc"))
	if u := kvmrc["LIBVIRT_URI"]; u != "" {
		return u
	}
	return "qemu:///system"
}

// Attach opens the job's running domain.
func (*KVM) Attach(ctx context.Context, j *hostjob.Job) (hypervisor.Domain, error) {
	d, err := openRunning(j.DeployID)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Recover thaws a VM an interrupted run left frozen or suspended (from the journal) and stops
// a backup job it left running.
func (*KVM) Recover(ctx context.Context, j *hostjob.Job) error {
	if !j.Decision.Live {
		return nil
	}
	d, err := openRunning(j.DeployID)
	if errors.Is(err, hypervisor.ErrNotRunning) {
		// A VM that does not run holds no freeze and no backup job.
		if jr := hostjob.LoadJournal(j.TmpDir); jr.Frozen != "" {
			jr.Frozen = ""
			hostjob.SaveJournal(j.TmpDir, jr)
		}
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	var errs []error
	if err := d.AbortBackupJob(); err != nil {
		errs = append(errs, err)
	}
	jr := hostjob.LoadJournal(j.TmpDir)
	if jr.Frozen != "" {
		if err := thaw(d, jr.Frozen); err != nil && jr.Frozen == "SUSPEND" {
			errs = append(errs, err)
		} else {
			if err != nil {
				// A guest agent that does not answer cannot hold a freeze either.
				j.Log.Warnf("VM %d: thaw after an earlier run: %v", j.VMID, err)
			}
			j.Log.Warnf("VM %d was left %s by an earlier run: thawed", j.VMID, map[string]string{"AGENT": "frozen", "SUSPEND": "suspended"}[jr.Frozen])
			jr.Frozen = ""
			hostjob.SaveJournal(j.TmpDir, jr)
		}
	}
	return errors.Join(errs...)
}

// CheckStopped refuses a power-off backup of a domain that runs. When libvirt cannot be asked
// the files are read as they are, as OpenNebula does.
func (*KVM) CheckStopped(ctx context.Context, j *hostjob.Job) error {
	if j.DeployID == "" {
		return nil
	}
	d, err := openDomain(j.DeployID)
	if err != nil {
		return nil
	}
	defer d.Close()
	if active, err := d.dom.IsActive(); err == nil && active {
		return fmt.Errorf("VM %d: domain %s is running on this host; a power-off backup needs it stopped", j.VMID, j.DeployID)
	}
	return nil
}

// Quiesce applies FS_FREEZE (recorded in the journal first) and returns the undo.
func (*KVM) Quiesce(ctx context.Context, j *hostjob.Job) (func() error, error) {
	mode := strings.ToUpper(j.FSFreeze)
	if mode != "AGENT" && mode != "SUSPEND" {
		return func() error { return nil }, nil
	}
	d, err := openDomain(j.DeployID)
	if err != nil {
		return nil, err
	}
	jr := hostjob.LoadJournal(j.TmpDir)
	jr.Frozen = mode
	if err := hostjob.SaveJournal(j.TmpDir, jr); err != nil {
		d.Close()
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
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		err = errors.New("timed out after 60 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	freezeFailed := err != nil
	undo := func() error {
		defer d.Close()
		if err := thaw(d, mode); err != nil && !(mode == "AGENT" && freezeFailed) {
			return err
		}
		jr := hostjob.LoadJournal(j.TmpDir)
		jr.Frozen = ""
		return hostjob.SaveJournal(j.TmpDir, jr)
	}
	if err != nil {
		undo() // a freeze that half happened (or timed out late) must not stay
		return nil, fmt.Errorf("FS_FREEZE=%s failed on VM %d (set FS_FREEZE=NONE to back up without freezing): %w", mode, j.VMID, err)
	}
	j.Log.Infof("VM %d %s for the backup point", j.VMID, map[string]string{"AGENT": "filesystems frozen", "SUSPEND": "suspended"}[mode])
	return undo, nil
}

func thaw(d *domain, mode string) error {
	switch mode {
	case "AGENT":
		if err := d.dom.FSThaw(nil, 0); err != nil {
			return fmt.Errorf("cannot thaw the guest filesystems: %w", err)
		}
	case "SUSPEND":
		st, _, err := d.dom.GetState()
		if err == nil && st != libvirt.DOMAIN_PAUSED {
			return nil
		}
		if err := d.dom.Resume(); err != nil {
			return fmt.Errorf("cannot resume the VM: %w", err)
		}
	}
	return nil
}
