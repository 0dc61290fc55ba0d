// Package lxc is the LXC hypervisor side: containers run by the lxc tools, the way OpenNebula's
// LXC driver runs them (container one-<vid>, its disks mapped on the host with a loop device or
// qemu-nbd and mounted under <VM dir>/mapper). It only ever asks the lxc tools and the kernel;
// a container is unknown to libvirt, so nothing here may touch virsh or libvirt.
//
// LXC does not keep disk images open the way QEMU does (it is not a hypervisor.ImageHolder): the
// storage side reads the disks itself, and this side only says whether the container is stopped
// and fixes a consistent point while it runs.
package lxc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
)

func init() {
	hypervisor.Register(matrix.LXC, func() hypervisor.Hypervisor { return &LXC{} })
}

// LXC implements hypervisor.Hypervisor.
type LXC struct{}

// Name is the matrix's name of this side.
func (*LXC) Name() matrix.Hypervisor { return matrix.LXC }

// asRoot runs a tool that needs root. The host side runs as oneadmin while the containers are
// root's, so it goes through sudo, as OpenNebula's LXC driver does; the README lists the sudo
// rule it needs.
func asRoot(ctx context.Context, argv ...string) ([]byte, error) {
	if os.Geteuid() != 0 {
		argv = append([]string{"sudo", "-n"}, argv...)
	}
	return hostjob.Run(ctx, nil, argv...)
}

// State is the container's state as lxc-info prints it (RUNNING, FROZEN, STOPPED, ...);
// "STOPPED" also for a container that is not defined on this host (OpenNebula removes it when
// the VM is powered off or undeployed).
func State(ctx context.Context, name string) (string, error) {
	if name == "" {
		return "STOPPED", nil
	}
	out, err := asRoot(ctx, "lxc-info", "-n", name, "-s")
	if err != nil {
		if strings.Contains(err.Error(), "doesn't exist") {
			return "STOPPED", nil
		}
		return "", fmt.Errorf("cannot read the state of container %s: %w", name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "State" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("lxc-info printed no state for container %s: %q", name, out)
}

// CheckStopped refuses a power-off backup while the container runs or while one of its disks is
// still mapped on the host: OpenNebula's LXC driver tears the mappings down on shutdown, so a
// mapping left means something may still write through it.
func (*LXC) CheckStopped(ctx context.Context, j *hostjob.Job) error {
	st, err := State(ctx, j.DeployID)
	if err != nil {
		return err
	}
	if st != "STOPPED" {
		return fmt.Errorf("VM %d: container %s is %s on this host; a power-off backup needs it stopped", j.VMID, j.DeployID, st)
	}
	for _, d := range j.Disks {
		// Only files are mapped (loop, qemu-nbd); an RBD image or an LV is used as it is, and
		// a power-off LV's link may point to a device that is not there while inactive.
		if d.Path == "" || d.Kind.Side() != matrix.SideFile {
			continue
		}
		holders, err := mappedBy("/", d.Path)
		if err != nil {
			return fmt.Errorf("VM %d disk %d: %w", j.VMID, d.ID, err)
		}
		if len(holders) > 0 {
			return fmt.Errorf("VM %d disk %d: %s is still mapped on this host (%s) although the container is stopped; unmap it before a power-off backup", j.VMID, d.ID, d.Path, strings.Join(holders, ", "))
		}
	}
	return nil
}

// Quiesce fixes a consistent point of a running container. OpenNebula's guest agent and pause
// do not exist for containers, so FS_FREEZE maps to what the host can do itself:
//   - AGENT: fsfreeze of every mounted disk of the container (<VM dir>/mapper/disk.<id>), which
//     flushes the file systems and blocks writers, as the agent would inside a VM;
//   - SUSPEND: lxc-freeze, which stops every process of the container (cgroup freezer).
//
// The freeze is recorded in the journal first, so that Recover can undo it after a crash.
func (*LXC) Quiesce(ctx context.Context, j *hostjob.Job) (func() error, error) {
	mode := strings.ToUpper(j.FSFreeze)
	jr := hostjob.LoadJournal(j.TmpDir)
	switch mode {
	case "AGENT":
		jr.FrozenMounts = mountedDisks(j)
		if len(jr.FrozenMounts) == 0 {
			return nil, fmt.Errorf("FS_FREEZE=AGENT on VM %d: no disk of container %s is mounted under %s", j.VMID, j.DeployID, filepath.Join(j.VMDir, "mapper"))
		}
	case "SUSPEND":
		if j.DeployID == "" {
			return nil, fmt.Errorf("FS_FREEZE=SUSPEND on VM %d: no container name (deploy id)", j.VMID)
		}
	default:
		return func() error { return nil }, nil
	}
	jr.Frozen = mode
	if err := hostjob.SaveJournal(j.TmpDir, jr); err != nil {
		return nil, err
	}
	var err error
	if mode == "SUSPEND" {
		_, err = asRoot(ctx, "lxc-freeze", "-n", j.DeployID)
	} else {
		for _, m := range jr.FrozenMounts {
			if _, err = asRoot(ctx, "fsfreeze", "-f", m); err != nil {
				break
			}
		}
	}
	undo := func() error { return unfreeze(context.WithoutCancel(ctx), j) }
	if err != nil {
		// A freeze that half happened (some mounts frozen) must not stay.
		undo()
		return nil, fmt.Errorf("FS_FREEZE=%s failed on VM %d (set FS_FREEZE=NONE to back up without freezing): %w", mode, j.VMID, err)
	}
	j.Log.Infof("VM %d %s for the backup point", j.VMID, map[string]string{"AGENT": "file systems frozen", "SUSPEND": "container frozen"}[mode])
	return undo, nil
}

// Recover undoes a freeze an interrupted run left (read from the journal).
func (*LXC) Recover(ctx context.Context, j *hostjob.Job) error {
	jr := hostjob.LoadJournal(j.TmpDir)
	if jr.Frozen == "" {
		return nil
	}
	if err := unfreeze(ctx, j); err != nil {
		return err
	}
	j.Log.Warnf("VM %d was left frozen (%s) by an earlier run: thawed", j.VMID, jr.Frozen)
	return nil
}

// unfreeze thaws what the journal says is frozen and clears it; thawing what is not frozen
// (anymore) is fine, so it can run any number of times.
func unfreeze(ctx context.Context, j *hostjob.Job) error {
	jr := hostjob.LoadJournal(j.TmpDir)
	var errs []error
	switch jr.Frozen {
	case "SUSPEND":
		st, err := State(ctx, j.DeployID)
		if err != nil {
			errs = append(errs, err)
		} else if st == "FROZEN" || st == "FREEZING" {
			if _, err := asRoot(ctx, "lxc-unfreeze", "-n", j.DeployID); err != nil {
				errs = append(errs, err)
			}
		}
	case "AGENT":
		// Thaw in reverse order; fsfreeze -u of a file system that is not frozen fails with
		// EINVAL, which means there is nothing to undo there.
		for i := len(jr.FrozenMounts) - 1; i >= 0; i-- {
			m := jr.FrozenMounts[i]
			if _, err := asRoot(ctx, "fsfreeze", "-u", m); err != nil && !strings.Contains(err.Error(), "Invalid argument") {
				errs = append(errs, fmt.Errorf("cannot thaw %s: %w", m, err))
			}
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	jr.Frozen, jr.FrozenMounts = "", nil
	return hostjob.SaveJournal(j.TmpDir, jr)
}

// mountedDisks lists the mount points <VM dir>/mapper/disk.<id> of the job's disks that are
// mounted now (the LXC driver mounts every disk of the container there).
func mountedDisks(j *hostjob.Job) []string {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	points := map[string]bool{}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			points[unescapeMount(f[4])] = true
		}
	}
	var out []string
	for _, d := range j.Disks {
		p := filepath.Join(j.VMDir, "mapper", fmt.Sprintf("disk.%d", d.ID))
		if points[p] {
			out = append(out, p)
		}
	}
	return out
}

// unescapeMount decodes the octal escapes (\040 for a space) of /proc/self/mountinfo paths.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var n int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &n); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
