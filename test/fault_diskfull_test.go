package test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// smallDS puts a datastore's directory on the backup server on a tmpfs of sizeMiB: a backup
// server whose disk fills up. grow gives it more room (the operator freeing space).
func smallDS(t *testing.T, id, sizeMiB int) (base string, grow func(sizeMiB int)) {
	t.Helper()
	base = resetDS(t, id)
	run(t, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0755", sizeMiB), "tmpfs", base)
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if _, err := runErr("umount", base); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("cannot unmount %s", base)
	})
	chownOneadmin(t, base)
	return base, func(sizeMiB int) {
		run(t, "mount", "-o", fmt.Sprintf("remount,size=%dm", sizeMiB), base)
	}
}

// The backup server's disk fills during the upload: the backup fails at once with one line
// saying the destination is full, leaves no half snapshot or partial tree, the earlier restore
// point stays, and once there is room again the next backup succeeds.
func TestFaultDiskFullRestic(t *testing.T) {
	const dsID, vmID = 533, 753
	base, grow := smallDS(t, dsID, 48)
	ds := resticDS(dsID, nil)
	repo := fmt.Sprintf("%s/%d", base, vmID)
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	first := h.resticBackup(t, ds, "hv1", vmID, "", "")

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{96}, 64)
	start := time.Now()
	r := h.driver(t, "restic", "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	t.Logf("after %s: %s", time.Since(start).Round(time.Second), r.stderr)
	if r.code == 0 || !oneFailure(r.stderr, "destination full") {
		t.Fatalf("backup to a full server: exit %d, stderr %q", r.code, r.stderr)
	}
	if time.Since(start) > 3*time.Minute {
		t.Errorf("the backup to a full server took %s to fail", time.Since(start))
	}
	if snaps := h.snapshots(t, repo); len(snaps) != 1 || snaps[0].ID[:8] != first {
		t.Fatalf("repository holds %+v after the failure, want only %s", snaps, first)
	}
	if locks := strings.TrimSpace(h.restic(t, repo, "list", "locks", "--no-lock")); locks != "" {
		t.Errorf("locks left: %s", locks)
	}

	grow(256)
	st := stageBackup(t, stagingOf(vmID), vmID, 0, []int{96}, 64)
	next := h.resticBackup(t, ds, "hv1", vmID, "", "")
	h.checkSnapshot(t, repo, next, vmID, st)
	h.restic(t, repo, "check")
}

func TestFaultDiskFullRsync(t *testing.T) {
	const dsID, vmID = 534, 754
	base, grow := smallDS(t, dsID, 48)
	ds := rsyncDS(dsID, nil)
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{8}, 1)
	first, _ := h.rsyncBackup(t, ds, "hv1", vmID, "", "")

	stageBackup(t, stagingOf(vmID), vmID, 0, []int{96}, 64)
	r := h.driver(t, "rsync", "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	t.Logf("%s", r.stderr)
	if r.code == 0 || !oneFailure(r.stderr, "destination full") {
		t.Fatalf("backup to a full server: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := dirNames(t, fmt.Sprintf("%s/%d", base, vmID)); len(got) != 1 || got[0] != first {
		t.Fatalf("backup tree holds %v after the failure, want only %s", got, first)
	}

	grow(256)
	st := stageBackup(t, stagingOf(vmID), vmID, 0, []int{96}, 64)
	next, _ := h.rsyncBackup(t, ds, "hv1", vmID, "", "")
	checkRsyncBackup(t, base, vmID, next, st)
	if _, err := os.Stat(fmt.Sprintf("%s/%d/%s", base, vmID, first)); err != nil {
		t.Errorf("the earlier restore point is gone: %v", err)
	}
}
