package test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// rsyncChain backs up n restore points of a 2-disk VM into an rsync datastore.
func rsyncChain(t *testing.T, dsID, vmID, n int) (*diskChain, []inc, string) {
	t.Helper()
	ds := rsyncDS(dsID, nil)
	c := newDiskChain(t, vmID, 2)
	var incs []inc
	for i := 0; i < n; i++ {
		c.next(t, stagingOf(vmID))
		id, _ := h.rsyncBackup(t, ds, "hv1", vmID, "", "")
		incs = append(incs, inc{i, id})
	}
	return c, incs, ds
}

// rsyncRestore rebuilds disk d at the last item of chain from the stored files, independently
// of the driver (the specification's rebase + convert recipe on copies).
func rsyncRestore(t *testing.T, base string, vmID int, chain []inc, d int) string {
	t.Helper()
	var pieces []string
	for _, it := range chain {
		pieces = append(pieces, fmt.Sprintf("%s/%d/%s/disk.%d.%d", base, vmID, it.snap, d, it.id))
	}
	return rebuild(t, pieces)
}

// treeHashes maps every file under dir to its SHA-256.
func treeHashes(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			data, _ := os.ReadFile(p)
			out[p] = sha256.Sum256(data)
		}
		return nil
	})
	return out
}

func TestRsyncDownloaderRestoresChain(t *testing.T) {
	base := resetDS(t, 212)
	c, incs, ds := rsyncChain(t, 212, 72, 4)
	stored := treeHashes(t, base)
	env := onedWithDatastores(t, map[int]string{212: ds})
	chain := func(n int) string {
		var parts []string
		for _, it := range incs[:n+1] {
			parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
		}
		return strings.Join(parts, ",")
	}
	for _, point := range []int{3, 1, 0} {
		for d := 0; d < 2; d++ {
			url := fmt.Sprintf("rsync://212//%s%s/72/%s/disk.%d.%d", chain(point), base, incs[point].snap, d, point)
			sameDisk(t, h.download(t, "rsync", url, env), c.refs[point][d], url)
		}
	}
	img := imageXML(16, 72, "", incs, "")
	out := h.mustDriver(t, "rsync", "ls", []string{"-i", "2"}, backupStdin(ds, vmXML(72, "")+img))
	for d := 0; d < 2; d++ {
		m := regexp.MustCompile(fmt.Sprintf(`"%d":"([^"]+)"`, d)).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("ls -i 2 printed %q", out)
		}
		sameDisk(t, h.download(t, "rsync", m[1], env), c.refs[2][d], "ls -i 2 + downloader")
	}
	for p, sum := range treeHashes(t, base) {
		if stored[p] != sum {
			t.Errorf("restoring modified the stored file %s", p)
		}
	}
	// A URL whose file is not in the last restore point's directory is refused.
	bad := fmt.Sprintf("rsync://212//%s%s/72/%s/disk.0.1", chain(1), base, incs[0].snap)
	if r := h.driverAt(t, filepath.Join(h.repo, "drivers", "rsync_downloader.rb"), []string{bad}, nil, env...); r.code == 0 || strings.Contains(r.stdout, "command=") {
		t.Errorf("downloader accepted %s: %q", bad, r.stdout)
	}
}

func TestRsyncIncrementFlatten(t *testing.T) {
	base := resetDS(t, 213)
	c, incs, ds := rsyncChain(t, 213, 73, 5)
	img := imageXML(17, 73, "", incs, "")
	out := h.mustDriver(t, "rsync", "increment_flatten", []string{"17"}, flattenStdin(img, ds, 3))
	m := regexp.MustCompile(`^([0-9]+) (2:[0-9a-f]{6},3:[0-9a-f]{6},4:[0-9a-f]{6})\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flatten printed %q", out)
	}
	kept := parseChain(t, m[2])
	if kept[1] != incs[3] || kept[2] != incs[4] {
		t.Fatalf("new chain %v from %v", kept, incs)
	}
	want := []string{kept[0].snap, incs[3].snap, incs[4].snap}
	got := dirNames(t, fmt.Sprintf("%s/73", base))
	if len(got) != 3 || !contains(got, want[0]) || !contains(got, want[1]) || !contains(got, want[2]) {
		t.Fatalf("backup directories after flatten %v, want %v", got, want)
	}
	for p := 2; p <= 4; p++ {
		for d := 0; d < 2; d++ {
			sameDisk(t, rsyncRestore(t, base, 73, kept[:p-1], d), c.refs[p][d], fmt.Sprintf("restore point %d", p))
		}
	}
}

func TestRsyncFlattenKilled(t *testing.T) {
	base := resetDS(t, 214)
	c, incs, ds := rsyncChain(t, 214, 74, 5)
	img := imageXML(13, 74, "", incs, "")
	for _, step := range []string{"'qemu-img' 'convert'", "'cp'", "'du'"} {
		h.killFlattenAt(t, "rsync", img, ds, step)
		for p := 0; p < 5; p++ {
			sameDisk(t, rsyncRestore(t, base, 74, incs[:p+1], 1), c.refs[p][1], "restore point after a kill at "+step)
		}
	}
	out := h.mustDriver(t, "rsync", "increment_flatten", []string{"13"}, flattenStdin(img, ds, 3))
	kept := parseChain(t, strings.Fields(out)[1])
	sameDisk(t, rsyncRestore(t, base, 74, kept, 0), c.refs[4][0], "last restore point after flatten")
}
