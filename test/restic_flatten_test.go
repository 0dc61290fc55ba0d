package test

import (
	"bufio"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// resticChain backs up n restore points of a 2-disk VM into datastore ds and returns the chain.
func resticChain(t *testing.T, dsID, vmID, n int) (*diskChain, []inc, string) {
	t.Helper()
	ds := resticDS(dsID, nil)
	c := newDiskChain(t, vmID, 2)
	var incs []inc
	for i := 0; i < n; i++ {
		c.next(t, stagingOf(vmID))
		incs = append(incs, inc{i, h.resticBackup(t, ds, "hv1", vmID, "", "")})
	}
	return c, incs, ds
}

// resticRestore rebuilds disk d at the last item of chain from the repository, independently of
// the driver: restic dump of each piece, then the specification's rebase + convert recipe.
func resticRestore(t *testing.T, repo string, vmID int, chain []inc, d int) string {
	t.Helper()
	snaps := h.snapshots(t, repo)
	var pieces []string
	for _, it := range chain {
		var file string
		for _, s := range snaps {
			if strings.HasPrefix(s.ID, it.snap) {
				for _, p := range s.Paths {
					if strings.HasPrefix(path.Base(p), "disk."+string(rune('0'+d))+".") {
						file = p
					}
				}
			}
		}
		if file == "" {
			t.Fatalf("restore point %d:%s has no disk %d", it.id, it.snap, d)
		}
		dst := filepath.Join(t.TempDir(), path.Base(file))
		os.WriteFile(dst, []byte(h.restic(t, repo, "dump", "--quiet", it.snap, file)), 0o644)
		pieces = append(pieces, dst)
	}
	return rebuild(t, pieces)
}

func TestResticIncrementFlatten(t *testing.T) {
	base := resetDS(t, 122)
	c, incs, ds := resticChain(t, 122, 52, 5)
	repo := base + "/52"
	before := h.snapshots(t, repo)
	img := imageXML(12, 52, "", incs, "")

	// N <= KEEP_LAST: nothing to do, empty answer.
	if out := h.mustDriver(t, "restic", "increment_flatten", []string{"12"}, flattenStdin(img, ds, 5)); out != "" {
		t.Fatalf("flatten with KEEP_LAST 5 of 5 printed %q", out)
	}
	out := h.mustDriver(t, "restic", "increment_flatten", []string{"12"}, flattenStdin(img, ds, 3))
	m := regexp.MustCompile(`^([0-9]+) (2:[0-9a-f]{8},3:[0-9a-f]{8},4:[0-9a-f]{8})\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flatten printed %q, want \"<size_mb> 2:<new>,3:<id>,4:<id>\"", out)
	}
	kept := parseChain(t, m[2])
	if kept[0].snap == incs[2].snap || kept[1] != incs[3] || kept[2] != incs[4] {
		t.Fatalf("new chain %v from %v", kept, incs)
	}
	after := h.snapshots(t, repo)
	if len(after) != 3 || !strings.HasPrefix(after[0].ID, kept[0].snap) {
		t.Fatalf("repository after flatten: %+v", after)
	}
	// The merged snapshot sorts where the newest merged one was, and keeps the layout.
	var oldTime, newTime string
	for _, s := range before {
		if strings.HasPrefix(s.ID, incs[2].snap) {
			oldTime = s.Time
		}
	}
	for _, s := range after {
		if strings.HasPrefix(s.ID, kept[0].snap) {
			newTime = s.Time
			for _, p := range s.Paths {
				if !strings.Contains(p, "/52/backup/") || strings.Contains(p, "/datastores/0/") {
					t.Errorf("merged snapshot path %s: want a private path ending in /52/backup/<file>", p)
				}
			}
		}
	}
	if oldTime[:19] != newTime[:19] && !sameInstant(oldTime, newTime) {
		t.Errorf("merged snapshot time %s, newest merged one was %s", newTime, oldTime)
	}
	for p := 2; p <= 4; p++ {
		for d := 0; d < 2; d++ {
			sameDisk(t, resticRestore(t, repo, 52, kept[:p-1], d), c.refs[p][d], "restore point "+string(rune('0'+p)))
		}
	}
	if left, _ := filepath.Glob("/var/tmp/onebackup-tmp-*/52"); len(left) > 0 {
		t.Errorf("temporary directories left: %v", left)
	}
}

// sameInstant compares two RFC 3339 times to the second.
func sameInstant(a, b string) bool {
	ta, err1 := parseTime(a)
	tb, err2 := parseTime(b)
	return err1 == nil && err2 == nil && ta.Unix() == tb.Unix()
}

// TestResticFlattenKilled kills increment_flatten (with its children) at three steps: while
// pulling the merge set, while merging, and while storing the merged restore point. Each time the
// chain oned still has restores at every point, and a final flatten succeeds.
func TestResticFlattenKilled(t *testing.T) {
	base := resetDS(t, 123)
	c, incs, ds := resticChain(t, 123, 53, 5)
	repo := base + "/53"
	img := imageXML(13, 53, "", incs, "")
	for _, step := range []string{"'dump'", "'qemu-img' 'commit'", "'backup'"} {
		h.killFlattenAt(t, "restic", img, ds, step)
		for p := 0; p < 5; p++ {
			sameDisk(t, resticRestore(t, repo, 53, incs[:p+1], 0), c.refs[p][0], "restore point after a kill at "+step)
		}
	}
	left, _ := filepath.Glob("/var/tmp/onebackup-tmp-*/53") // what the killed runs left
	for _, d := range left {
		os.RemoveAll(filepath.Dir(d))
	}
	out := h.mustDriver(t, "restic", "increment_flatten", []string{"13"}, flattenStdin(img, ds, 3))
	kept := parseChain(t, strings.Fields(out)[1])
	sameDisk(t, resticRestore(t, repo, 53, kept, 1), c.refs[4][1], "last restore point after flatten")
}

// killFlattenAt runs increment_flatten -v and SIGKILLs its process group when a DEBUG line
// shows it running a command matching step.
func (h *harness) killFlattenAt(t *testing.T, backend, img, ds, step string) {
	t.Helper()
	cmd := h.driverCmd(t, backend, "increment_flatten", []string{"13", "-v"}, flattenStdin(img, ds, 3))
	cmd.SysProcAttr.Setpgid = true
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	killed := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "DEBUG: running") && strings.Contains(sc.Text(), step) {
			time.Sleep(200 * time.Millisecond)
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			killed = true
			break
		}
	}
	io.Copy(io.Discard, stderr)
	cmd.Wait()
	if !killed {
		t.Fatalf("flatten never ran %s", step)
	}
	waitFor(t, "the killed flatten's processes to end", 10*time.Second, func() bool {
		return len(processesMatching("onebackup-tmp-")) == 0
	})
}

// TestResticFlattenWaitsForLock runs increment_flatten while another restic process holds a lock
// on the repository (a slow upload): flatten waits for it instead of failing.
func TestResticFlattenWaitsForLock(t *testing.T) {
	base := resetDS(t, 124)
	c, incs, ds := resticChain(t, 124, 54, 4)
	repo := base + "/54"
	blob := "/var/lib/one/flatten-lock-test.blob"
	data := make([]byte, 6<<20)
	rand.Read(data)
	os.WriteFile(blob, data, 0o644)
	defer os.Remove(blob)
	slow := exec.Command("/var/lib/one/remotes/datastore/restic/restic", "--repo=sftp:oneadmin@bk1:"+repo,
		"--limit-upload=768", "backup", "--tag=other", blob)
	slow.Env = h.driverEnv("RESTIC_PASSWORD=" + resticPassword)
	slow.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	if err := slow.Start(); err != nil {
		t.Fatal(err)
	}
	slowDone := make(chan error, 1)
	go func() { slowDone <- slow.Wait() }()
	waitFor(t, "the other upload to lock the repository", 30*time.Second, func() bool {
		return strings.TrimSpace(h.restic(t, repo, "list", "locks", "--no-lock")) != ""
	})
	img := imageXML(14, 54, "", incs, "")
	out := h.mustDriver(t, "restic", "increment_flatten", []string{"14"}, flattenStdin(img, ds, 2))
	select {
	case err := <-slowDone:
		if err != nil {
			t.Fatalf("the other upload failed: %v", err)
		}
	default:
		t.Fatalf("flatten finished while the other upload still held its lock")
	}
	kept := parseChain(t, strings.Fields(out)[1])
	if len(kept) != 2 || kept[0].id != 2 {
		t.Fatalf("chain after flatten: %v", kept)
	}
	sameDisk(t, resticRestore(t, repo, 54, kept, 0), c.refs[3][0], "last restore point")
}
