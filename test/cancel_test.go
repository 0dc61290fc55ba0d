package test

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startBackup starts a backup action in the background.
func (h *harness) startBackup(t *testing.T, backend string, ds string, vmID int) (*exec.Cmd, *bytes.Buffer, chan error) {
	t.Helper()
	cmd := h.driverCmd(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return cmd, &out, done
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cancelDuringUpload runs backups of VMs 5 and 55 (a prefix of each other) at once on hv1, stops
// VM 5's with stop(), and checks: 5 fails quickly, nothing of it is left, 55 succeeds, and the
// next backup of 5 succeeds.
func cancelDuringUpload(t *testing.T, backend string, ds, slowDS string, leftovers func(t *testing.T), stop func(cmd *exec.Cmd)) {
	stageBackup(t, stagingOf(5), 5, 0, []int{32}, 16)
	stageBackup(t, stagingOf(55), 55, 0, []int{32}, 16)
	other, otherOut, otherDone := h.startBackup(t, backend, slowDS, 55)
	defer other.Process.Kill()
	cmd, out, done := h.startBackup(t, backend, slowDS, 5)
	defer cmd.Process.Kill()

	uploading := func() bool { return len(processesMatching(backend, "/datastores/0/5/backup")) > 0 }
	waitFor(t, "the upload of VM 5 to start on hv1", 60*time.Second, uploading)
	waitFor(t, "the upload of VM 55 to start on hv1", 60*time.Second, func() bool {
		return len(processesMatching(backend, "/datastores/0/55/backup")) > 0
	})
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	stop(cmd)
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("cancelled backup exited 0: %s", out)
		}
		if took := time.Since(start); took > 20*time.Second {
			t.Errorf("cancelled backup took %v to exit", took)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("cancelled backup did not exit: %s", out)
	}
	if !strings.Contains(out.String(), "cancelled") {
		t.Errorf("cancelled backup says %q", out)
	}
	if p := processesMatching("/datastores/0/5/backup"); len(p) > 0 {
		t.Errorf("processes of the cancelled backup remain:\n%s", strings.Join(p, "\n"))
	}
	leftovers(t)

	select {
	case err := <-otherDone:
		if err != nil {
			t.Fatalf("the concurrent backup of VM 55 failed: %v: %s", err, otherOut)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("the concurrent backup of VM 55 did not finish")
	}
	r := h.driver(t, backend, "backup", backupArgs("hv1", 5, ""), backupStdin(ds, vmXML(5, "")))
	if r.code != 0 {
		t.Fatalf("backup after the cancelled one failed: %s", r.stderr)
	}
}

func resticLeftovers(base string) func(t *testing.T) {
	return func(t *testing.T) {
		if locks := strings.TrimSpace(h.restic(t, base+"/5", "list", "locks", "--no-lock")); locks != "" {
			t.Errorf("repository of VM 5 still locked: %s", locks)
		}
	}
}

func TestResticSigtermDuringBackup(t *testing.T) {
	base := resetDS(t, 120)
	ds := resticDS(120, nil)
	slow := resticDS(120, dsAttrs{"RESTIC_BWLIMIT": "1024"}) // 16 MiB at 1 MiB/s
	cancelDuringUpload(t, "restic", ds, slow, resticLeftovers(base), func(cmd *exec.Cmd) {
		cmd.Process.Signal(syscall.SIGTERM)
	})
}

func TestResticBackupCancelAction(t *testing.T) {
	base := resetDS(t, 121)
	ds := resticDS(121, nil)
	slow := resticDS(121, dsAttrs{"RESTIC_BWLIMIT": "1024"})
	cancelDuringUpload(t, "restic", ds, slow, resticLeftovers(base), func(*exec.Cmd) {
		h.mustDriver(t, "restic", "backup_cancel", []string{"hv1:" + vmDir(5), "one-5"}, []byte(vmXML(5, "")))
	})
	// Nothing running: backup_cancel succeeds and does nothing.
	h.mustDriver(t, "restic", "backup_cancel", []string{"hv1:" + vmDir(5), "one-5"}, []byte(fmt.Sprintf("<VM><ID>%d</ID></VM>", 5)))
}
