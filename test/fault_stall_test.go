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
	data, err := os.ReadFile(filepath.Join(h.state, host, "sshd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	listener, _ := strconv.Atoi(strings.TrimSpace(string(data)))
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

// stallDuringUpload stops (SIGSTOP) every session of the backup server while a slow upload
// runs: the connection stays open and moves nothing, as behind a dead network path. The backup
// must fail within the keep-alive bound with one line naming the cause, leave nothing in the
// repository, and the next backup must succeed with the earlier restore point intact.
func stallDuringUpload(t *testing.T, backend string, vmID int, ds, slowDS string, check func(t *testing.T, ids []string)) {
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	first := backupID(t, h.mustDriver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, ""))))

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{32}, 16)
	cmd, out, done := h.startBackup(t, backend, slowDS, vmID)
	defer cmd.Process.Kill()
	waitFor(t, "the upload to start on hv1", 60*time.Second, func() bool {
		return len(processesMatching(backend, fmt.Sprintf("/datastores/0/%d/backup", vmID))) > 0
	})
	time.Sleep(time.Second)
	stopped := sessionsOf(t, "bk1")
	for _, pid := range stopped {
		syscall.Kill(pid, syscall.SIGSTOP)
	}
	resume := func() {
		for _, pid := range stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	start := time.Now()
	select {
	case err := <-done:
		took := time.Since(start)
		t.Logf("the stalled backup failed after %s: %s", took.Round(time.Second), strings.TrimSpace(out.String()))
		if err == nil {
			t.Fatalf("a backup to a stalled server succeeded: %s", out)
		}
		if took > remote.StallTimeout+90*time.Second {
			t.Errorf("the stalled backup took %s to fail; the keep-alive bound is %s", took, remote.StallTimeout)
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("the backup to a stalled server did not end: %s", out)
	}
	if !oneFailure(out.String(), "stopped responding") {
		t.Errorf("the failure does not say the backup server stopped responding: %s", out)
	}
	resume()

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	next := backupID(t, h.mustDriver(t, backend, "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, ""))))
	check(t, []string{first, next})
}

func backupID(t *testing.T, out string) string {
	t.Helper()
	f := strings.Fields(out)
	if len(f) == 0 {
		t.Fatalf("backup printed %q", out)
	}
	return f[0]
}

func TestFaultStallRestic(t *testing.T) {
	const dsID, vmID = 531, 751
	base := resetDS(t, dsID)
	stallDuringUpload(t, "restic", vmID, resticDS(dsID, nil), resticDS(dsID, dsAttrs{"RESTIC_BWLIMIT": "1024"}), func(t *testing.T, ids []string) {
		repo := fmt.Sprintf("%s/%d", base, vmID)
		snaps := h.snapshots(t, repo)
		if len(snaps) != 2 || snaps[0].ID[:8] != ids[0] || snaps[1].ID[:8] != ids[1] {
			t.Errorf("repository holds %+v, want exactly %v (no half snapshot)", snaps, ids)
		}
		if locks := strings.TrimSpace(h.restic(t, repo, "list", "locks", "--no-lock")); locks != "" {
			t.Errorf("locks left: %s", locks)
		}
		h.restic(t, repo, "check")
	})
}

func TestFaultStallRsync(t *testing.T) {
	const dsID, vmID = 532, 752
	base := resetDS(t, dsID)
	stallDuringUpload(t, "rsync", vmID, rsyncDS(dsID, nil), rsyncDS(dsID, dsAttrs{"RSYNC_ARGS": "-aS --bwlimit=1024"}), func(t *testing.T, ids []string) {
		if got := dirNames(t, fmt.Sprintf("%s/%d", base, vmID)); strings.Join(got, " ") != strings.Join(slices.Sorted(slices.Values(ids)), " ") {
			t.Errorf("backup tree holds %v, want exactly %v (no partial tree)", got, ids)
		}
	})
}
