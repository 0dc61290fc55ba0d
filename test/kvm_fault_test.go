package test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"onebackup/internal/matrix"
)

// Requests outside the matrix fail in prebackup with the matrix's error, and change nothing.
func TestKVMMatrixRefusals(t *testing.T) {
	env := needKVM(t)
	vm := newVM(t, env, 530, &tdisk{id: 0, format: "qcow2", sizeMiB: 16}, &tdisk{id: 1, format: "raw", sizeMiB: 16})
	vm.start(t)
	rawRow, _ := matrix.Lookup(matrix.KVM, matrix.FileRaw)
	cases := []struct {
		name string
		c    bcfg
		want string
	}{
		{"raw incremental live", bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: true, disks: "0:1"}, rawRow.IncrLive.Reason},
		{"raw incremental poweroff", bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: false, disks: "1"}, rawRow.IncrPowerOff.Reason},
		{"disk not in template", bcfg{mode: "FULL", li: -1, live: true, disks: "0:7"}, "disk 7 is selected for backup but not in the VM template"},
		{"interactive", bcfg{mode: "FULL", li: -1, live: true, disks: "0", extraConfig: "<INTERACTIVE>YES</INTERACTIVE>"}, "INTERACTIVE=YES"},
	}
	for _, c := range cases {
		r := env.tm(t, "qcow2", actionName("prebackup", c.c.live), vm.tmArgs(c.c.disks), vm.xml(c.c))
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want the matrix error %q", c.name, r.code, r.stderr, c.want)
		}
	}
	// The row is named in the message.
	r := env.tm(t, "qcow2", "prebackup_live", vm.tmArgs("1"), vm.xml(bcfg{mode: "INCREMENT", li: -1, live: true}))
	if !strings.Contains(r.stderr, "KVM file raw") {
		t.Errorf("error does not name the row: %s", r.stderr)
	}
	if cps := vm.checkpoints(t); len(cps) != 0 {
		t.Errorf("refused backups left checkpoints %v", cps)
	}
	vm.checkClean(t)
	// Unsupported TM driver.
	r = env.tm(t, "ceph", "prebackup", vm.tmArgs("0"), vm.xml(bcfg{mode: "FULL", li: -1}))
	if r.code == 0 {
		t.Errorf("ceph TM accepted by the file driver: %s", r.stderr)
	}
}

// CBT loss: a clean restart (libvirt forgot the checkpoints, the bitmaps survived) keeps the
// chain incremental; QEMU killed makes the next backup a full inside the chain, which restores.
func TestKVMFileCBTLoss(t *testing.T) {
	env := needKVM(t)
	vid := 540
	base := resetDS(t, 420)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(420, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64})
	vm.start(t)
	vm.write(t, 0, 0x71, 0, 6<<20)
	var chain []string
	var wants []map[int]string
	step := func(k int, live bool) string {
		wants = append(wants, vm.expect(t, fmt.Sprint(k)))
		c := bcfg{mode: "INCREMENT", li: k - 1, incMode: "CBT", live: live}
		pre := env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c))
		if pre.code != 0 {
			t.Fatalf("prebackup %d: %s", k, pre.stderr)
		}
		chain = append(chain, vm.upload(t, ds))
		post := env.tm(t, "qcow2", actionName("postbackup", live), vm.tmArgs("0"), vm.xml(c))
		if post.code != 0 || strings.Contains(post.stderr, "WARNING") {
			t.Fatalf("postbackup %d: %s", k, post.stderr)
		}
		vm.checkClean(t)
		return pre.stderr
	}
	step(0, true)
	vm.write(t, 0, 0x72, 10<<20, 1<<20)
	vm.stop(t)
	vm.start(t) // transient domain: checkpoint metadata gone
	vm.write(t, 0, 0x73, 12<<20, 1<<20)
	if log := step(1, true); strings.Contains(log, "CBT lost") {
		t.Errorf("a clean restart lost CBT: %s", log)
	}
	vm.write(t, 0, 0x74, 14<<20, 1<<20)
	vm.kill(t)
	vm.start(t)
	vm.write(t, 0, 0x75, 16<<20, 1<<20)
	if log := step(2, true); !strings.Contains(log, "CBT lost") || !strings.Contains(log, "full backup inside the chain") {
		t.Errorf("QEMU killed: the log does not say CBT was lost: %s", log)
	}
	vm.write(t, 0, 0x76, 18<<20, 1<<20)
	step(3, true)
	// Power-off after an unclean stop: the bitmap is in-use in the image.
	vm.write(t, 0, 0x77, 20<<20, 1<<20)
	vm.kill(t)
	if log := step(4, false); !strings.Contains(log, "CBT lost") {
		t.Errorf("power-off after QEMU killed: no CBT loss reported: %s", log)
	}
	vm.write(t, 0, 0x78, 22<<20, 1<<20)
	step(5, false)
	for k := range chain {
		sizes := vm.restoreCompare(t, repo, chain[:k+1], 0, wants[k][0])
		if (k == 1 || k == 3 || k == 5) && sizes[k] > 3<<20 {
			t.Errorf("increment %d after the loss/restart is not incremental: %d bytes", k, sizes[k])
		}
	}
}

// startTM starts a TM action in the background.
func startTM(t *testing.T, env *kvmEnv, action string, vm *testVM, c bcfg, holdPhase string) (*exec.Cmd, *bytes.Buffer) {
	mad := c.tmMad
	if mad == "" {
		mad = "qcow2"
	}
	cmd := env.tmCmd(t, mad, action, vm.tmArgs(c.disks), vm.xml(c), vm.env2...)
	if holdPhase != "" {
		cmd.Env = append(cmd.Env, "ONEBACKUP_TEST_HOLD="+holdPhase)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, &errb
}

func waitFile(t *testing.T, p string, cmd *exec.Cmd, errb *bytes.Buffer) {
	for i := 0; i < 600; i++ {
		if _, err := os.Stat(p); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Fatalf("%s never appeared: %s", p, errb.String())
}

// interruptEachPhase backs VM vid up (a full), then, for each phase, writes into the guest,
// interrupts an increment there with interrupt, and checks what is left: the VM runs, resumed,
// on its original chain, nothing of the try is in the VM directory, and the anchors are as
// before it. Finally the retried increment succeeds and every point restores. It runs live and
// power-off.
func interruptEachPhase(t *testing.T, vid, dsID int, phases func(live bool) []string,
	interrupt func(t *testing.T, env *kvmEnv, vm *testVM, ds, phase string, c, failed bcfg)) {
	env := needKVM(t)
	base := resetDS(t, dsID)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(dsID, nil)
	for _, live := range []bool{true, false} {
		vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64})
		if live {
			vm.start(t)
		}
		vm.write(t, 0, 0x31, 0, 4<<20)
		w0 := vm.expect(t, "0")
		c0 := bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: live, freeze: "SUSPEND", disks: "0"}
		chain := []string{vm.backupRound(t, ds, c0)}
		for i, phase := range phases(live) {
			vm.write(t, 0, 0x40+i, int64(8+i)<<20, 512<<10)
			c := bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: live, freeze: "SUSPEND", disks: "0"}
			failed := c
			failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
			interrupt(t, env, vm, ds, phase, c, failed)
			// Let the host side finish its cleanup (it holds the VM lock while it does).
			time.Sleep(500 * time.Millisecond)
			vm.waitUnlocked(t)
			vm.checkClean(t)
			anchor := fmt.Sprintf("one-%d-0", vid)
			if live {
				if cps := vm.checkpoints(t); len(cps) != 1 || cps[0] != anchor {
					t.Errorf("%s: checkpoints %v after the interrupted try, want [%s]", phase, cps, anchor)
				}
			} else if bms := vm.bitmaps(t, 0); len(bms) != 1 || bms[0] != anchor {
				t.Errorf("%s: bitmaps %v after the interrupted try, want [%s]", phase, bms, anchor)
			}
		}
		// The retry of increment 1 succeeds and restores.
		w1 := vm.expect(t, "1")
		c1 := bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: live, freeze: "SUSPEND", disks: "0"}
		chain = append(chain, vm.backupRound(t, ds, c1))
		vm.restoreCompare(t, repo, chain[:1], 0, w0[0])
		vm.restoreCompare(t, repo, chain, 0, w1[0])
		if live {
			vm.stop(t)
		}
	}
}

// SIGTERM at each phase (guest suspended, export running, upload running, postbackup).
func TestKVMFileCancel(t *testing.T) {
	phases := func(live bool) []string {
		if live {
			return []string{"frozen", "export", "upload", "postbackup"}
		}
		return []string{"export", "upload", "postbackup"}
	}
	interruptEachPhase(t, 550, 421, phases, func(t *testing.T, env *kvmEnv, vm *testVM, ds, phase string, c, failed bcfg) {
		live := c.live
		switch phase {
		case "frozen", "export":
			cmd, errb := startTM(t, env, actionName("prebackup", live), vm, c, phase)
			waitFile(t, filepath.Join(vm.dir, "tmp", "hold."+phase), cmd, errb)
			if live && phase == "frozen" {
				if st := strings.TrimSpace(virsh(t, "domstate", vm.name)); st != "paused" {
					t.Errorf("FS_FREEZE=SUSPEND: domain is %s while frozen", st)
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(errb.String(), "cancelled") {
				t.Errorf("%s: cancelled prebackup exit %d: %s", phase, cmd.ProcessState.ExitCode(), errb.String())
			}
			// Step F of the VMM driver.
			env.tm(t, "qcow2", actionName("postbackup", live), vm.tmArgs("0"), vm.xml(failed))
		case "upload":
			if r := env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c)); r.code != 0 {
				t.Fatalf("prebackup: %s", r.stderr)
			}
			up := h.driverCmd(t, "restic", "backup", backupArgs("hv1", vm.id, ""), backupStdin(ds, vmXML(vm.id, "")))
			up.Start()
			time.Sleep(300 * time.Millisecond)
			up.Process.Signal(syscall.SIGTERM)
			up.Wait()
			env.tm(t, "qcow2", actionName("postbackup", live), vm.tmArgs("0"), vm.xml(failed))
		case "postbackup":
			if r := env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c)); r.code != 0 {
				t.Fatalf("prebackup: %s", r.stderr)
			}
			vm.upload(t, ds) // oned will not learn of it: LI stays 0
			cmd, errb := startTM(t, env, actionName("postbackup", live), vm, failed, phase)
			waitFile(t, filepath.Join(vm.dir, "tmp", "hold."+phase), cmd, errb)
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
	})
}

// VMs 5 and 55 back up at the same time on the same host; cancelling 55 never touches 5.
func TestKVMFilePrefixVMs(t *testing.T) {
	env := needKVM(t)
	base := resetDS(t, 422)
	ds := resticDS(422, nil)
	vm5 := newVM(t, env, 5, &tdisk{id: 0, format: "qcow2", sizeMiB: 32})
	vm55 := newVM(t, env, 55, &tdisk{id: 0, format: "qcow2", sizeMiB: 32})
	for _, vm := range []*testVM{vm5, vm55} {
		vm.start(t)
		vm.write(t, 0, 0x55, 0, 2<<20)
		vm.backupRound(t, ds, bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: true})
		vm.write(t, 0, 0x56, 4<<20, 1<<20)
	}
	c := bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: true, disks: "0"}
	cmd55, err55 := startTM(t, env, "prebackup_live", vm55, c, "export")
	waitFile(t, filepath.Join(vm55.dir, "tmp", "hold.export"), cmd55, err55)
	want5 := vm5.expect(t, "1")
	pre5 := env.tm(t, "qcow2", "prebackup_live", vm5.tmArgs("0"), vm5.xml(c))
	if pre5.code != 0 {
		t.Fatalf("VM 5 prebackup while 55 runs: %s", pre5.stderr)
	}
	cmd55.Process.Signal(syscall.SIGTERM)
	cmd55.Wait()
	failed := c
	failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
	env.tm(t, "qcow2", "postbackup_live", vm55.tmArgs("0"), vm55.xml(failed))
	// VM 5's staged backup survived the cancellation of 55 and completes.
	if _, err := os.Stat(filepath.Join(vm5.dir, "backup", "disk.0.1")); err != nil {
		t.Fatalf("cancelling VM 55 touched VM 5's staging: %v", err)
	}
	id1 := h.resticBackup(t, ds, "hv1", 5, "", "")
	if r := env.tm(t, "qcow2", "postbackup_live", vm5.tmArgs("0"), vm5.xml(c)); r.code != 0 {
		t.Fatal(r.stderr)
	}
	snaps := h.snapshots(t, base+"/5")
	vm5.restoreCompare(t, base+"/5", []string{snaps[0].ID, id1}, 0, want5[0])
	if cps := vm5.checkpoints(t); len(cps) != 1 || cps[0] != "one-5-1" {
		t.Errorf("VM 5 checkpoints %v", cps)
	}
	if cps := vm55.checkpoints(t); len(cps) != 1 || cps[0] != "one-55-0" {
		t.Errorf("VM 55 checkpoints %v", cps)
	}
	vm5.checkClean(t)
	vm55.checkClean(t)
}

// QEMU killed while a live backup job runs (a full that starts a chain, then an increment): the
// backup fails with one line, nothing of it is left in the VM directory, and once the VM runs
// again the next backup succeeds — after the killed increment as a full inside the chain,
// logged — and every restore point restores.
func TestFaultQEMUKilledDuringLiveJob(t *testing.T) {
	env := needKVM(t)
	vid := 761
	base := resetDS(t, 541)
	repo := base + fmt.Sprint("/", vid)
	ds := resticDS(541, nil)
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 64})
	vm.start(t)
	vm.write(t, 0, 0x51, 0, 6<<20)

	killDuring := func(c bcfg) {
		t.Helper()
		cmd, errb := startTM(t, env, "prebackup_live", vm, c, "export")
		waitFile(t, filepath.Join(vm.dir, "tmp", "hold.export"), cmd, errb)
		// The guest flushed what it wrote (as a file system does on sync): a killed QEMU
		// loses only unflushed writes, which no backup can hold either.
		virsh(t, "qemu-monitor-command", vm.name, "--hmp", fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "flush"`, vm.index(0)))
		vm.kill(t)
		os.WriteFile(filepath.Join(vm.dir, "tmp", "release.export"), nil, 0o644)
		cmd.Wait()
		if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(errb.String(), "QEMU process ended during the live backup") {
			t.Fatalf("prebackup with QEMU killed: exit %d, stderr %q", cmd.ProcessState.ExitCode(), errb.String())
		}
		t.Logf("prebackup with QEMU killed: %s", errb.String())
		failed := c
		failed.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
		env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(failed))
		vm.waitUnlocked(t)
		vm.checkClean(t)
		vm.start(t)
	}

	// The chain's full.
	killDuring(bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: true, disks: "0"})
	w0 := vm.expect(t, "0")
	chain := []string{vm.backupRound(t, ds, bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: true})}

	// An increment.
	vm.write(t, 0, 0x52, 8<<20, 1<<20)
	killDuring(bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: true, disks: "0"})
	vm.write(t, 0, 0x53, 10<<20, 1<<20)
	w1 := vm.expect(t, "1")
	c1 := bcfg{mode: "INCREMENT", li: 0, incMode: "CBT", live: true, disks: "0"}
	pre := env.tm(t, "qcow2", "prebackup_live", vm.tmArgs("0"), vm.xml(c1))
	if pre.code != 0 || !strings.Contains(pre.stderr, "CBT lost") {
		t.Fatalf("the backup after QEMU was killed: exit %d, log %q (want CBT lost: a full inside the chain)", pre.code, pre.stderr)
	}
	chain = append(chain, vm.upload(t, ds))
	if post := env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(c1)); post.code != 0 {
		t.Fatalf("postbackup: %s", post.stderr)
	}
	vm.checkClean(t)
	vm.restoreCompare(t, repo, chain[:1], 0, w0[0])
	vm.restoreCompare(t, repo, chain, 0, w1[0])
	vm.stop(t)
}

// killHostSide SIGKILLs the host-side program of vm's backup (no cleanup of its own can run).
func killHostSide(t *testing.T, vm *testVM) {
	t.Helper()
	procs := processesMatching(" host ", "--deploy-id "+vm.uuid+" ")
	if len(procs) == 0 {
		t.Fatalf("no host-side process of VM %d to kill", vm.id)
	}
	for _, p := range procs {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// SIGKILL of the host side at each phase (guest frozen, export running, postbackup): nothing
// of it can clean up. oned then runs postbackup with BACKUP_RESULT=FAILURE (it saw the backup
// fail), and the next backup cleans what a killed postbackup left; together they must leave
// what a cancelled try leaves.
func TestKVMFileKilled(t *testing.T) {
	phases := func(live bool) []string {
		if live {
			return []string{"frozen", "export", "postbackup"}
		}
		return []string{"export", "postbackup"}
	}
	interruptEachPhase(t, 786, 551, phases, func(t *testing.T, env *kvmEnv, vm *testVM, ds, phase string, c, failed bcfg) {
		live := c.live
		action, cfg := actionName("prebackup", live), c
		if phase == "postbackup" {
			if r := env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c)); r.code != 0 {
				t.Fatalf("prebackup: %s", r.stderr)
			}
			vm.upload(t, ds) // oned will not learn of it: LI stays 0
			action, cfg = actionName("postbackup", live), failed
		}
		cmd, errb := startTM(t, env, action, vm, cfg, phase)
		waitFile(t, filepath.Join(vm.dir, "tmp", "hold."+phase), cmd, errb)
		killHostSide(t, vm)
		cmd.Wait()
		if phase == "postbackup" {
			// oned does not use postbackup's result: it warns and succeeds, the next backup
			// removes what is left. Here the next try's prebackup does, then its upload fails.
			if cmd.ProcessState.ExitCode() != 0 || !strings.Contains(errb.String(), "WARNING: "+action) {
				t.Errorf("killed postbackup: exit %d: %s", cmd.ProcessState.ExitCode(), errb.String())
			}
			if r := env.tm(t, "qcow2", actionName("prebackup", live), vm.tmArgs("0"), vm.xml(c)); r.code != 0 {
				t.Fatalf("prebackup after the killed postbackup: %s", r.stderr)
			}
		} else if cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("%s: the killed %s succeeded", phase, action)
		}
		// oned saw the backup fail: postbackup with the failure, as the VMM driver's step F.
		if r := env.tm(t, "qcow2", actionName("postbackup", live), vm.tmArgs("0"), vm.xml(failed)); r.code != 0 {
			t.Errorf("%s: postbackup after the kill: exit %d: %s", phase, r.code, r.stderr)
		}
	})
}
