package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// holdLock starts `restic prune` as oneadmin on a repository (a path on the backup server) and
// stops it (SIGSTOP) the moment its exclusive lock file is in place: an operator's long prune,
// frozen while holding the lock. It returns the process, still stopped.
func holdLock(t *testing.T, repo string) *os.Process {
	t.Helper()
	locks := filepath.Join(repo, "locks")
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := syscall.InotifyAddWatch(fd, locks, syscall.IN_CREATE|syscall.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/var/lib/one/remotes/datastore/restic/restic", "--repo="+repo, "prune")
	cmd.Env = h.driverEnv("RESTIC_PASSWORD=" + resticPassword)
	cmd.Dir = "/var/lib/one"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// restic writes a lock as <name>-tmp-<n> and renames it: the lock holds from the rename.
	buf := make([]byte, 4096)
	for {
		n, err := syscall.Read(fd, buf)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off < n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := string(bytes.TrimRight(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)], "\x00"))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if name != "" && !strings.Contains(name, "-tmp-") {
				if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				return cmd.Process
			}
		}
	}
}

// A lock held by someone else for longer than the datastore waits (RESTIC_LOCK_WAIT): the backup
// fails in bounded time with one line naming the holder, leaves the repository as it was; once
// the holder is gone (killed: its lock is stale), the next backup removes that lock itself and
// succeeds, and every restore point restores.
func TestFaultResticForeignLock(t *testing.T) {
	const dsID, vmID = 530, 750
	base := resetDS(t, dsID)
	ds := resticDS(dsID, dsAttrs{"RESTIC_LOCK_WAIT": "5s"})
	st1 := stageBackup(t, stagingOf(vmID), vmID, 0, []int{16}, 2)
	id1 := h.resticBackup(t, ds, "hv1", vmID, "", "")
	h.checkSnapshot(t, filepath.Join(base, strconv.Itoa(vmID)), id1, vmID, st1)
	repo := filepath.Join(base, strconv.Itoa(vmID))

	holder := holdLock(t, repo)
	host, _ := os.Hostname()
	stageBackup(t, stagingOf(vmID), vmID, 0, []int{16}, 2)
	start := time.Now()
	r := h.driver(t, "restic", "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	took := time.Since(start)
	want := "stayed locked by restic PID " + strconv.Itoa(holder.Pid) + " on " + host + " (user oneadmin) holding it exclusively"
	if r.code == 0 || !oneFailure(r.stderr, want) || !strings.Contains(r.stderr, "RESTIC_LOCK_WAIT") {
		t.Fatalf("backup against a held lock: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Logf("after %s:\n%s", took.Round(time.Second), strings.TrimSpace(r.stderr))
	if took > 90*time.Second {
		t.Errorf("the backup waited %s for a lock the datastore waits 5 s for", took)
	}
	if snaps := h.snapshots(t, repo); len(snaps) != 1 || snaps[0].ID[:8] != id1 {
		t.Fatalf("the failed backup changed the repository: %+v", snaps)
	}

	// The holder dies without releasing its lock.
	holder.Kill()
	holder.Wait()
	if locks, _ := os.ReadDir(filepath.Join(repo, "locks")); len(locks) != 1 {
		t.Fatalf("the killed holder left %d locks, want its 1", len(locks))
	}
	st2 := stageBackup(t, stagingOf(vmID), vmID, 0, []int{16}, 2)
	r = h.driver(t, "restic", "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
	if r.code != 0 || !strings.Contains(r.stderr, "removed 1 stale lock(s)") {
		t.Fatalf("backup after the holder died: exit %d, stderr %q", r.code, r.stderr)
	}
	id2 := strings.Fields(r.stdout)[0]
	if locks, _ := os.ReadDir(filepath.Join(repo, "locks")); len(locks) != 0 {
		t.Errorf("%d locks left in the repository", len(locks))
	}
	// The earlier restore point is still there; the new one holds what was staged.
	if snaps := h.snapshots(t, repo); len(snaps) != 2 || snaps[0].ID[:8] != id1 || snaps[1].ID[:8] != id2 {
		t.Errorf("repository holds %+v, want %s and %s", snaps, id1, id2)
	}
	h.checkSnapshot(t, repo, id2, vmID, st2)
}
