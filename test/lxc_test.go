package test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor/lxc"
	"onebackup/internal/matrix"
)

// The LXC tests run real containers of the lxc tools, laid out as OpenNebula's LXC driver lays
// them out: the root file system is a raw image disk.0 of the VM directory, attached to a loop
// device, mounted at <VM dir>/mapper/disk.0 and bind-mounted to /var/lib/lxc-one/<vid>/disk.0;
// the container is one-<vid>.

var (
	lxcOnce sync.Once
	lxcErr  error
)

// needLXC sets up the KVM harness (the host program, the frontend TM command, the datastore
// directories; libvirtd runs too, which makes the no-libvirt check meaningful) and the lxc tools.
func needLXC(t *testing.T) *kvmEnv {
	t.Helper()
	env := needKVM(t)
	lxcOnce.Do(func() {
		out, err := exec.Command(filepath.Join(h.repo, "test/harness/setup-lxc.sh")).CombinedOutput()
		if err != nil {
			lxcErr = fmt.Errorf("setup-lxc.sh: %v\n%s", err, out)
		}
	})
	if lxcErr != nil {
		t.Fatalf("LXC harness: %v", lxcErr)
	}
	return env
}

type container struct {
	vm     *testVM
	disk   string // <VM dir>/disk.0
	mapper string // <VM dir>/mapper/disk.0
	bind   string // /var/lib/lxc-one/<vid>/disk.0
	loop   string // the loop device while attached
	marker string // what the container wrote into /marker
}

// newContainer creates VM vid's directory with a 64 MiB raw ext4 image holding a busybox root
// file system, and the container's configuration; the disk is attached and mounted.
func newContainer(t *testing.T, env *kvmEnv, vid int) *container {
	t.Helper()
	name := fmt.Sprintf("one-%d", vid)
	vm := &testVM{env: env, id: vid, dir: fmt.Sprintf("/var/lib/one/datastores/0/%d", vid), name: name, uuid: name,
		disks: []*tdisk{{id: 0, format: "raw", sizeMiB: 64}}, tmp: t.TempDir()}
	c := &container{vm: vm, disk: filepath.Join(vm.dir, "disk.0"), mapper: filepath.Join(vm.dir, "mapper/disk.0"),
		bind: fmt.Sprintf("/var/lib/lxc-one/%d/disk.0", vid)}
	c.destroy()
	os.MkdirAll(vm.dir, 0o755)
	run(t, "truncate", "-s", "64M", c.disk)
	run(t, "mkfs.ext4", "-q", "-F", c.disk)
	c.attach(t)
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc"} {
		os.MkdirAll(filepath.Join(c.mapper, d), 0o755)
	}
	run(t, "cp", "/bin/busybox", filepath.Join(c.mapper, "bin/busybox"))
	for _, cmd := range []string{"sh", "sleep", "sync", "cat"} {
		os.Symlink("busybox", filepath.Join(c.mapper, "bin", cmd))
	}
	os.MkdirAll("/var/lib/lxc/"+name, 0o755)
	conf := strings.Join([]string{
		"lxc.uts.name = " + name,
		"lxc.rootfs.path = dir:" + c.bind,
		"lxc.console.path = none",
		"lxc.init.cmd = /bin/sleep 86400",
		"lxc.net.0.type = empty",
		"lxc.mount.auto = proc:mixed sys:ro",
	}, "\n") + "\n"
	if err := os.WriteFile("/var/lib/lxc/"+name+"/config", []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	chownOneadmin(t, vm.dir)
	t.Cleanup(func() {
		if !t.Failed() {
			c.destroy()
		} else {
			exec.Command("lxc-stop", "-n", name, "-k").Run()
		}
	})
	return c
}

// attach maps and mounts the disk as the LXC driver does when the container starts.
func (c *container) attach(t *testing.T) {
	t.Helper()
	c.loop = strings.TrimSpace(run(t, "losetup", "--find", "--show", c.disk))
	os.MkdirAll(c.mapper, 0o755)
	run(t, "mount", c.loop, c.mapper)
	os.MkdirAll(c.bind, 0o755)
	run(t, "mount", "--bind", c.mapper, c.bind)
}

// detach undoes attach, as the LXC driver does when the container is shut down.
func (c *container) detach(t *testing.T) {
	t.Helper()
	run(t, "umount", c.bind)
	run(t, "umount", c.mapper)
	run(t, "losetup", "-d", c.loop)
	c.loop = ""
}

func (c *container) start(t *testing.T) {
	t.Helper()
	run(t, "lxc-start", "-n", c.vm.name)
	waitFor(t, c.vm.name+" to run", 30*time.Second, func() bool { return c.state() == "RUNNING" })
}

func (c *container) stop(t *testing.T) {
	t.Helper()
	run(t, "lxc-stop", "-n", c.vm.name, "-k")
	waitFor(t, c.vm.name+" to stop", 30*time.Second, func() bool { return c.state() == "STOPPED" })
}

func (c *container) state() string {
	st, _ := lxc.State(context.Background(), c.vm.name)
	return st
}

// writeMarker has the container write a random marker into /marker and flush it.
func (c *container) writeMarker(t *testing.T) {
	t.Helper()
	c.marker = randomHex(16)
	run(t, "lxc-attach", "-n", c.vm.name, "--", "/bin/sh", "-c", "echo "+c.marker+" > /marker && sync")
}

// destroy removes everything of the container, whatever state an earlier run left it in.
func (c *container) destroy() {
	exec.Command("lxc-stop", "-n", c.vm.name, "-k").Run()
	for _, m := range []string{c.bind, c.mapper} {
		exec.Command("umount", m).Run()
	}
	if out, err := exec.Command("losetup", "-j", c.disk).Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if dev, _, ok := strings.Cut(line, ":"); ok {
				exec.Command("losetup", "-d", dev).Run()
			}
		}
	}
	os.RemoveAll("/var/lib/lxc/" + c.vm.name)
	os.RemoveAll(filepath.Dir(c.bind))
	os.RemoveAll(c.vm.dir)
}

func lxcCfg(mode string, live bool) bcfg {
	li := -1
	if mode == "INCREMENT" {
		li = 0
	}
	return bcfg{mode: mode, li: li, live: live, tmMad: "ssh", vmMad: "lxc"}
}

// sshdPid is the pid of a simulated host's sshd listener.
func sshdPid(t *testing.T, host string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.state, host, "sshd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("sshd.pid of %s: %v", host, err)
	}
	return pid
}

// traceHost records, with strace, every program started and every socket connected by the
// sessions of a simulated host's sshd until the returned stop is called.
func traceHost(t *testing.T, host string) (stop func() string) {
	t.Helper()
	pid := strconv.Itoa(sshdPid(t, host))
	log := filepath.Join(t.TempDir(), "strace.log")
	cmd := exec.Command("strace", "-f", "-qq", "-e", "trace=connect,execve", "-s", "256", "-o", log, "-p", pid)
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// strace writes the attach into its log only with -v; wait until ptrace holds the listener.
	waitFor(t, "strace to attach to "+host+"'s sshd", 10*time.Second, func() bool {
		st, _ := os.ReadFile("/proc/" + pid + "/status")
		return strings.Contains(string(st), "TracerPid:\t"+strconv.Itoa(cmd.Process.Pid))
	})
	return func() string {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		data, err := os.ReadFile(log)
		if err != nil {
			t.Fatalf("strace: %v: %s", err, errb.String())
		}
		return string(data)
	}
}

// TestLXCFilePowerOffBackup backs up a powered-off container through the TM actions and the
// restic datastore, restores it through the restic downloader and finds the container's disk
// byte for byte, marker included; nothing of the run talks to libvirt.
func TestLXCFilePowerOffBackup(t *testing.T) {
	env := needLXC(t)
	resetDS(t, 450)
	ds := resticDS(450, nil)
	c := newContainer(t, env, 610)
	c.start(t)
	c.writeMarker(t)

	// Running, or stopped with its disk still mapped: refused, nothing staged.
	r := env.tm(t, "ssh", "prebackup", c.vm.tmArgs("0"), c.vm.xml(lxcCfg("FULL", false)))
	if r.code == 0 || !strings.Contains(r.stderr, "container one-610 is RUNNING") {
		t.Fatalf("power-off prebackup of a running container: exit %d: %s", r.code, r.stderr)
	}
	c.stop(t)
	r = env.tm(t, "ssh", "prebackup", c.vm.tmArgs("0"), c.vm.xml(lxcCfg("FULL", false)))
	if r.code == 0 || !strings.Contains(r.stderr, "still mapped") || !strings.Contains(r.stderr, c.loop) {
		t.Fatalf("power-off prebackup with the disk still on %s: exit %d: %s", c.loop, r.code, r.stderr)
	}
	if _, err := os.Stat(stagingOf(c.vm.id)); err == nil {
		t.Errorf("a refused prebackup left %s", stagingOf(c.vm.id))
	}
	c.detach(t)
	reference := filepath.Join(c.vm.tmp, "reference.raw")
	run(t, "cp", "--sparse=always", c.disk, reference)

	stop := traceHost(t, "hv1")
	snap := c.vm.backupRound(t, ds, lxcCfg("FULL", false))
	trace := stop()
	checkNoLibvirt(t, trace)

	env2 := onedWithDatastores(t, map[int]string{450: ds})
	url := fmt.Sprintf("restic://450//0:%s%s/disk.0.0", snap, stagingOf(c.vm.id))
	got := h.download(t, "restic", url, env2)
	restored := filepath.Join(c.vm.tmp, "restored.raw")
	run(t, "qemu-img", "convert", "-O", "raw", got, restored)
	if out, err := runErr("cmp", restored, reference); err != nil {
		t.Fatalf("the restored disk differs from the container's disk: %s", out)
	}
	// debugfs reads the file system in the image without mounting it (its banner goes to stderr).
	out, err := exec.Command("debugfs", "-R", "cat /marker", restored).Output()
	if err != nil || strings.TrimSpace(string(out)) != c.marker {
		t.Fatalf("the restored disk's /marker holds %q (%v), want %q", out, err, c.marker)
	}

	// The restored image boots the container again.
	run(t, "cp", "--sparse=always", restored, c.disk)
	c.attach(t)
	c.start(t)
	if got := strings.TrimSpace(run(t, "lxc-attach", "-n", c.vm.name, "--", "/bin/cat", "/marker")); got != c.marker {
		t.Errorf("the container restored from the backup reads /marker %q, want %q", got, c.marker)
	}
	c.stop(t)
	c.detach(t)
}

// checkNoLibvirt reads an strace log of the host side: it must show the host program and the
// lxc tools running (or the trace proves nothing), and no connection to libvirt nor virsh.
func checkNoLibvirt(t *testing.T, trace string) {
	t.Helper()
	var sawHost, sawLXC bool
	sc := bufio.NewScanner(strings.NewReader(trace))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.Contains(line, "execve(") && strings.Contains(line, "onebackup-host"):
			sawHost = true
		case strings.Contains(line, "execve(") && strings.Contains(line, `"lxc-info"`):
			sawLXC = true
		}
		if strings.Contains(line, "libvirt") && strings.Contains(line, "connect(") ||
			strings.Contains(line, "execve(") && strings.Contains(line, "virsh") {
			t.Errorf("the LXC backup talked to libvirt: %s", line)
		}
	}
	if !sawHost || !sawLXC {
		t.Fatalf("the trace of hv1 shows no run of the host program (%v) or of lxc-info (%v):\n%s", sawHost, sawLXC, trace)
	}
}

// TestLXCFileRefusals: live and incremental requests for LXC file disks fail with the matrix's
// message naming the row, before anything is staged or frozen.
func TestLXCFileRefusals(t *testing.T) {
	env := needLXC(t)
	c := newContainer(t, env, 611)
	c.start(t)
	cases := []struct {
		name   string
		action string
		cfg    bcfg
		want   string
	}{
		{"live full", "prebackup_live", lxcCfg("FULL", true), "LXC file raw: full live backup not supported: LXC containers on this storage can be backed up only while powered off"},
		{"incremental", "prebackup", lxcCfg("INCREMENT", false), "LXC file raw: incremental power-off backup not supported: LXC containers support full backups only"},
		{"live incremental", "prebackup_live", lxcCfg("INCREMENT", true), "LXC file raw: incremental live backup not supported: LXC containers support full backups only"},
		{"interactive", "prebackup", func() bcfg {
			cfg := lxcCfg("FULL", false)
			cfg.extraConfig = "<INTERACTIVE>YES</INTERACTIVE>"
			return cfg
		}(), "LXC file raw: interactive backups (INTERACTIVE=YES, OneBEX) are not supported"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := env.tm(t, "ssh", tc.action, c.vm.tmArgs("0"), c.vm.xml(tc.cfg))
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("%s: exit %d, stderr %q; want the row's refusal %q", tc.action, r.code, r.stderr, tc.want)
			}
			for _, p := range []string{"tmp", "backup"} {
				if _, err := os.Stat(filepath.Join(c.vm.dir, p)); err == nil {
					t.Errorf("the refused request left %s/%s", c.vm.dir, p)
				}
			}
		})
	}
	if st := c.state(); st != "RUNNING" {
		t.Errorf("the container is %s after the refusals", st)
	}
	c.stop(t)
	c.detach(t)
}

type testLog struct{ t *testing.T }

func (l testLog) Infof(f string, a ...any) { l.t.Logf("info: "+f, a...) }
func (l testLog) Warnf(f string, a ...any) { l.t.Logf("warning: "+f, a...) }

// TestLXCQuiesce drives the LXC hypervisor side's freeze on a running container: SUSPEND freezes
// the container's processes, AGENT the file systems of its disks, and both are undone by the
// returned undo or, after a crash, by Recover (from the journal).
func TestLXCQuiesce(t *testing.T) {
	env := needLXC(t)
	c := newContainer(t, env, 612)
	c.start(t)
	job := func(freeze string) *hostjob.Job {
		d := hostjob.Disk{Kind: matrix.FileRaw, Path: c.disk, Format: "raw"}
		d.ID = 0
		return &hostjob.Job{VMID: c.vm.id, DeployID: c.vm.name, VMDir: c.vm.dir, TmpDir: filepath.Join(c.vm.dir, "tmp"),
			Disks: []hostjob.Disk{d}, FSFreeze: freeze, Log: testLog{t}}
	}
	hv := &lxc.LXC{}
	ctx := context.Background()
	fsFrozen := func() bool {
		// A second freeze of a frozen file system fails with EBUSY; undo the probe otherwise.
		if _, err := runErr("fsfreeze", "-f", c.mapper); err != nil {
			return true
		}
		run(t, "fsfreeze", "-u", c.mapper)
		return false
	}

	undo, err := hv.Quiesce(ctx, job("SUSPEND"))
	if err != nil {
		t.Fatal(err)
	}
	if st := c.state(); st != "FROZEN" {
		t.Errorf("FS_FREEZE=SUSPEND left the container %s", st)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if st := c.state(); st != "RUNNING" {
		t.Errorf("after the undo of SUSPEND the container is %s", st)
	}

	undo, err = hv.Quiesce(ctx, job("AGENT"))
	if err != nil {
		t.Fatal(err)
	}
	if !fsFrozen() {
		t.Error("FS_FREEZE=AGENT did not freeze " + c.mapper)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if fsFrozen() {
		t.Error("the undo of AGENT left " + c.mapper + " frozen")
	}

	// A run killed while frozen: the next run's Recover thaws from the journal.
	for _, mode := range []string{"SUSPEND", "AGENT"} {
		if _, err := hv.Quiesce(ctx, job(mode)); err != nil {
			t.Fatal(err)
		}
		if err := hv.Recover(ctx, job("NONE")); err != nil {
			t.Fatal(err)
		}
		if st := c.state(); st != "RUNNING" || fsFrozen() {
			t.Errorf("Recover after a %s freeze: container %s, file system frozen %v", mode, st, fsFrozen())
		}
		if jr := hostjob.LoadJournal(filepath.Join(c.vm.dir, "tmp")); jr.Frozen != "" || len(jr.FrozenMounts) > 0 {
			t.Errorf("Recover left the journal %+v", jr)
		}
	}
	// Nothing frozen: Recover is a no-op.
	if err := hv.Recover(ctx, job("NONE")); err != nil {
		t.Error(err)
	}
	c.stop(t)
	c.detach(t)
}
