package lvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"onebackup/internal/hostjob"
)

// Host is what the LVM side asks of the host's LVM tools. The System implementation runs them;
// the plans of the tests (device-mapper does not run on the machines the tests run on) come
// from a simulated thin pool behind the same interface, fed with the real tools' output.
type Host interface {
	// Report lists the logical volumes of a volume group (lvs).
	Report(ctx context.Context, vg string) ([]Volume, error)
	// Change runs one LVM or device-mapper command that changes something (lvcreate,
	// lvchange, lvremove, lvextend, dmsetup message), as root.
	Change(ctx context.Context, argv ...string) error
	// Delta writes thin_delta's report of the changes between two thin devices of a pool,
	// read from the pool's metadata snapshot, to w.
	Delta(ctx context.Context, tmeta string, from, to int, w io.Writer) error
	// Device is the block device of a logical volume, or of a pool's -tpool / _tmeta
	// device-mapper node (sub "tpool" or "tmeta").
	Device(vg, lv, sub string) string
	// Lock takes the volume group's metadata lock shared with OpenNebula's own LVM drivers.
	Lock(ctx context.Context, vg string) (unlock func(), err error)
}

// System runs the real tools. Metadata commands run through sudo unless the host side runs as
// root, as OpenNebula's sudoers allow them for oneadmin; LockDir is /var/lock/one.
type System struct {
	LockDir   string
	sudoOnce  sync.Once
	sudoDelta bool
}

func (s *System) asRoot(argv []string) []string {
	if os.Geteuid() == 0 {
		return argv
	}
	return append([]string{"sudo", "-n"}, argv...)
}

// Report implements Host.
func (s *System) Report(ctx context.Context, vg string) ([]Volume, error) {
	out, err := hostjob.Run(ctx, nil, s.asRoot(reportArgv(vg))...)
	if err != nil {
		return nil, fmt.Errorf("cannot list the logical volumes of %s: %w", vg, err)
	}
	return ParseReport(out)
}

// Change implements Host.
func (s *System) Change(ctx context.Context, argv ...string) error {
	_, err := hostjob.Run(ctx, nil, s.asRoot(argv)...)
	return err
}

// Delta implements Host. The pool's metadata device is readable by root (or the disk group):
// thin_delta goes through sudo when oneadmin's sudoers allow it, directly otherwise (a node set
// up as OpenNebula documents it has oneadmin in the disk group).
func (s *System) Delta(ctx context.Context, tmeta string, from, to int, w io.Writer) error {
	argv := deltaArgv(tmeta, from, to)
	if os.Geteuid() != 0 {
		s.sudoOnce.Do(func() {
			s.sudoDelta = exec.CommandContext(ctx, "sudo", "-n", "-l", argv[0]).Run() == nil
		})
		if s.sudoDelta {
			argv = append([]string{"sudo", "-n"}, argv...)
		}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	var errb strings.Builder
	cmd.Stdout, cmd.Stderr = w, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s failed: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return nil
}

// Device implements Host: LVM's own /dev/<vg>/<lv> link for volumes; the device-mapper name of
// a pool's hidden nodes, where LVM doubles every '-' inside the VG and LV names.
func (s *System) Device(vg, lv, sub string) string {
	return DeviceOf(vg, lv, sub)
}

// DeviceOf is the device path of a volume or of a pool's hidden node.
func DeviceOf(vg, lv, sub string) string {
	esc := func(s string) string { return strings.ReplaceAll(s, "-", "--") }
	switch sub {
	case "tpool":
		return "/dev/mapper/" + esc(vg) + "-" + esc(lv) + "-tpool"
	case "tmeta":
		return "/dev/mapper/" + esc(vg) + "-" + esc(lv) + "_tmeta"
	}
	return "/dev/" + vg + "/" + lv
}

// Lock implements Host.
func (s *System) Lock(ctx context.Context, vg string) (func(), error) {
	return flockVG(ctx, s.LockDir, vg)
}

// lockWait is how long a metadata command waits for another driver's lock (OpenNebula's
// scripts wait 120 s too).
const lockWait = 120 * time.Second

// LockName is the lock file of a volume group: the name OpenNebula's LVM drivers lock, so that
// their scripts and ours never change one VG's metadata at the same time.
func LockName(vg string) string {
	b := []byte(vg)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return "tm-onelvm-" + string(b) + ".lock"
}

// flockVG takes an exclusive flock(2) on <dir>/<LockName(vg)>, the same kind of lock flock(1)
// takes in OpenNebula's scripts.
func flockVG(ctx context.Context, dir, vg string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, LockName(vg))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) || ctx.Err() != nil {
			f.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("could not take the LVM metadata lock %s within %s (another LVM operation holds it): %v", p, lockWait, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reportArgv is the lvs run that lists a VG: JSON, sizes in bytes.
func reportArgv(vg string) []string {
	return []string{"lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
		"-o", "lv_name,vg_name,pool_lv,thin_id,lv_size,lv_active,origin,segtype", vg}
}

// deltaArgv is the thin_delta run that compares two thin devices in the metadata snapshot.
func deltaArgv(tmeta string, from, to int) []string {
	return []string{"thin_delta", "--metadata-snap", "--thin1", fmt.Sprint(from), "--thin2", fmt.Sprint(to), tmeta}
}
