package test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"onebackup/internal/remote"
)

// sessionsOf lists the processes serving the open ssh sessions of a simulated host: every
// descendant of its sshd listener (privilege-separated sshd, sftp-server, rsync), not the
// listener itself, which keeps accepting new connections.
func sessionsOf(t *testing.T, host string) []int {
	t.Helper()
	listener := sshdPid(t, host)
	parent := map[int]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		s, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(s[strings.LastIndexByte(string(s), ')')+1:]))
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if len(f) > 1 {
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	for pid := range parent {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == listener {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// faultDuringUpload breaks the backup server's open ssh sessions with fault while a slow upload
// runs. The backup must fail in bounded time with one line containing want, leave nothing in
// the repository, and the next backup must succeed with the earlier restore point intact.
func faultDuringUpload(t *testing.T, backend string, vmID int, ds, slowDS string, fault func(sessions []int) (undo func()), want string, check func(t *testing.T, ids []string)) {
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	first := backupID(t, h.mustDriver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, ""))))

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{32}, 16)
	cmd, out, done := h.startBackup(t, backend, slowDS, vmID)
	defer cmd.Process.Kill()
	waitFor(t, "the upload to start on hv1", 60*time.Second, func() bool {
		return len(processesMatching(backend, fmt.Sprintf("/datastores/0/%d/backup", vmID))) > 0
	})
	time.Sleep(time.Second)
	undo := fault(sessionsOf(t, "bk1"))
	defer undo()
	start := time.Now()
	select {
	case err := <-done:
		took := time.Since(start)
		t.Logf("the backup failed after %s: %s", took.Round(time.Second), strings.TrimSpace(out.String()))
		if err == nil {
			t.Fatalf("the backup succeeded: %s", out)
		}
		if took > remote.StallTimeout+90*time.Second {
			t.Errorf("the backup took %s to fail; the keep-alive bound is %s", took, remote.StallTimeout)
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("the backup did not end: %s", out)
	}
	if !oneFailure(out.String(), want) {
		t.Errorf("the failure does not say %q: %s", want, out)
	}
	undo()

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	next := backupID(t, h.mustDriver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, ""))))
	check(t, []string{first, next})
}

// stall stops the sessions (SIGSTOP): the connection stays open and moves nothing, as behind a
// dead network path.
func stall(sessions []int) func() {
	for _, pid := range sessions {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	return func() {
		for _, pid := range sessions {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}

// killSessions kills the sessions' sshd processes (SIGKILL): the server's sshd dies under the
// upload.
func killSessions(sessions []int) func() {
	for _, pid := range sessions {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return func() {}
}

func resticFaultCheck(base string, vmID int) func(t *testing.T, ids []string) {
	return func(t *testing.T, ids []string) {
		repo := fmt.Sprintf("%s/%d", base, vmID)
		snaps := h.snapshots(t, repo)
		if len(snaps) != 2 || snaps[0].ID[:8] != ids[0] || snaps[1].ID[:8] != ids[1] {
			t.Errorf("repository holds %+v, want exactly %v (no half snapshot)", snaps, ids)
		}
		if locks := strings.TrimSpace(h.restic(t, repo, "list", "locks", "--no-lock")); locks != "" {
			t.Errorf("locks left: %s", locks)
		}
		h.restic(t, repo, "check")
	}
}

func rsyncFaultCheck(base string, vmID int) func(t *testing.T, ids []string) {
	return func(t *testing.T, ids []string) {
		if got := dirNames(t, fmt.Sprintf("%s/%d", base, vmID)); strings.Join(got, " ") != strings.Join(slices.Sorted(slices.Values(ids)), " ") {
			t.Errorf("backup tree holds %v, want exactly %v (no partial tree)", got, ids)
		}
	}
}

func backupID(t *testing.T, out string) string {
	t.Helper()
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("backup printed %q", out)
	}
	return f[0]
}

// faultDS is a datastore of backend for the fault tests, its slow-upload variant (1 MiB/s, so
// that a fault lands in the middle of an upload), and the check that its repository holds
// exactly the given backups.
func faultDS(t *testing.T, backend string, dsID, vmID int) (ds, slow string, check func(*testing.T, []string)) {
	base := resetDS(t, dsID)
	if backend == "restic" {
		return resticDS(dsID, nil), resticDS(dsID, dsAttrs{"RESTIC_BWLIMIT": "1024"}), resticFaultCheck(base, vmID)
	}
	return rsyncDS(dsID, nil), rsyncDS(dsID, dsAttrs{"RSYNC_ARGS": "-aS --bwlimit=1024"}), rsyncFaultCheck(base, vmID)
}

func TestFaultStallRestic(t *testing.T) {
	ds, slow, check := faultDS(t, "restic", 531, 751)
	faultDuringUpload(t, "restic", 751, ds, slow, stall, "stopped responding", check)
}

func TestFaultStallRsync(t *testing.T) {
	ds, slow, check := faultDS(t, "rsync", 532, 752)
	faultDuringUpload(t, "rsync", 752, ds, slow, stall, "stopped responding", check)
}

// The backup server's sshd dies under the upload.
func TestFaultSSHDKilledRestic(t *testing.T) {
	ds, slow, check := faultDS(t, "restic", 535, 755)
	faultDuringUpload(t, "restic", 755, ds, slow, killSessions, "connection closed by the server", check)
}

func TestFaultSSHDKilledRsync(t *testing.T) {
	ds, slow, check := faultDS(t, "rsync", 536, 756)
	faultDuringUpload(t, "rsync", 756, ds, slow, killSessions, "connection closed by the server", check)
}

// The backup server does not answer when the backup starts (its sshd listener stopped: the
// connection is accepted by the kernel and nothing more): the backup fails after the connect
// timeout naming the unreachable server, creates nothing, and works once the server is back.
func TestFaultServerDownAtStart(t *testing.T) {
	listener := sshdPid(t, "bk1")
	for _, c := range []struct {
		backend string
		dsID    int
		ds      string
	}{{"restic", 537, resticDS(537, nil)}, {"rsync", 538, rsyncDS(538, nil)}} {
		t.Run(c.backend, func(t *testing.T) {
			const vmID = 757
			base := resetDS(t, c.dsID)
			stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
			syscall.Kill(listener, syscall.SIGSTOP)
			resumed := false
			resume := func() {
				if !resumed {
					syscall.Kill(listener, syscall.SIGCONT)
					resumed = true
				}
			}
			defer resume()
			start := time.Now()
			r := h.driver(t, c.backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(c.ds, vmXML(vmID, "")))
			resume()
			t.Logf("after %s: %s", time.Since(start).Round(time.Second), r.stderr)
			if r.code == 0 || !oneFailure(r.stderr, "host unreachable") || !strings.Contains(r.stderr, "bk1") {
				t.Fatalf("backup to a server that does not answer: exit %d, stderr %q", r.code, r.stderr)
			}
			if got := dirNames(t, base); len(got) != 0 {
				t.Errorf("the failed backup created %v", got)
			}
			stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
			h.mustDriver(t, c.backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(c.ds, vmXML(vmID, "")))
		})
	}
}

// SIGKILL of the backup action (its whole process group on the frontend) during the upload: the
// far-side programs stop on their own, and the next backup of the VM removes what the killed one
// left (its lock, its partial backup directory) and succeeds.
func killedUpload(t *testing.T, backend string, vmID int, ds, slowDS string, check func(t *testing.T, ids []string)) {
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	first := backupID(t, h.mustDriver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, ""))))

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{32}, 16)
	cmd := h.driverCmd(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(slowDS, vmXML(vmID, "")))
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	staging := fmt.Sprintf("/datastores/0/%d/backup", vmID)
	waitFor(t, "the upload to start on hv1", 60*time.Second, func() bool { return len(processesMatching(backend, staging)) > 0 })
	time.Sleep(time.Second)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	waitFor(t, "the killed backup's programs to stop", 30*time.Second, func() bool { return len(processesMatching(staging)) == 0 })

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	r := h.driver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	if r.code != 0 || !strings.Contains(r.stderr, "did not finish") {
		t.Fatalf("backup after the killed one: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Logf("%s", r.stderr)
	check(t, []string{first, backupID(t, r.stdout)})
}

func TestFaultKilledUploadRestic(t *testing.T) {
	ds, slow, check := faultDS(t, "restic", 539, 758)
	killedUpload(t, "restic", 758, ds, slow, check)
}

func TestFaultKilledUploadRsync(t *testing.T) {
	ds, slow, check := faultDS(t, "rsync", 540, 759)
	killedUpload(t, "rsync", 759, ds, slow, check)
}
