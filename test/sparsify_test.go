package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var (
	guestfsOnce sync.Once
	guestfsErr  error
)

// guestfsEnv installs virt-sparsify (once) and returns the environment its appliance needs here:
// direct backend, and TCG, as /dev/kvm may be missing or unusable for nested guests (libguestfs's
// own settings, which an operator on such a machine sets the same way).
func guestfsEnv(t *testing.T) []string {
	t.Helper()
	guestfsOnce.Do(func() {
		cmd := exec.Command(filepath.Join(h.repo, "test/harness/setup-guestfs.sh"))
		if out, err := cmd.CombinedOutput(); err != nil {
			guestfsErr = fmt.Errorf("setup-guestfs.sh: %v\n%s", err, out)
		}
	})
	if guestfsErr != nil {
		t.Fatal(guestfsErr)
	}
	return []string{"LIBGUESTFS_BACKEND=direct", "LIBGUESTFS_BACKEND_SETTINGS=force_tcg"}
}

// dataBytes is the size of the allocated data clusters of an image.
func dataBytes(t *testing.T, img string) int64 {
	t.Helper()
	var m []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", img)), &m); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range m {
		if e.Data {
			n += e.Length
		}
	}
	return n
}

// TestResticSparsify: with RESTIC_SPARSIFY=yes, increment_flatten gives the merged image's unused
// space back: a chain whose full holds a 48 MiB file that the increment deletes is stored, once
// flattened, without those blocks, and the file system's files are unchanged.
func TestResticSparsify(t *testing.T) {
	genv := guestfsEnv(t)
	vid, dsID := 38, 133
	base := resetDS(t, dsID)
	ds := resticDS(dsID, dsAttrs{"RESTIC_SPARSIFY": "yes"})
	work := t.TempDir()
	fs := filepath.Join(work, "fs.raw")
	run(t, "truncate", "-s", "128M", fs)
	run(t, "mkfs.ext4", "-q", "-F", fs)
	marker := filepath.Join(work, "marker")
	os.WriteFile(marker, []byte("sparsify "+randomHex(8)+"\n"), 0o644)
	big := filepath.Join(work, "big")
	run(t, "dd", "if=/dev/urandom", "of="+big, "bs=1M", "count=48", "status=none")
	run(t, "debugfs", "-w", "-R", "write "+marker+" marker", fs)
	run(t, "debugfs", "-w", "-R", "write "+big+" big", fs)
	full := filepath.Join(work, "disk.0.0")
	run(t, "qemu-img", "convert", "-O", "qcow2", fs, full)
	run(t, "debugfs", "-w", "-R", "rm big", fs)
	// The increment: the clusters that differ from the full (convert -B), stored without the
	// backing reference, as backups are.
	incr := filepath.Join(work, "disk.0.1")
	run(t, "qemu-img", "convert", "-O", "qcow2", "-B", full, "-F", "qcow2", fs, incr)
	run(t, "qemu-img", "rebase", "-q", "-u", "-b", "", incr)
	var incs []inc
	for k, piece := range []string{full, incr} {
		st := stageBackup(t, stagingOf(vid), vid, k, nil, 0)
		run(t, "cp", piece, st.dir+"/")
		chownOneadmin(t, st.dir)
		incs = append(incs, inc{k, h.resticBackup(t, ds, "hv1", vid, "", "")})
	}
	merged := rebuild(t, []string{full, incr})
	before := dataBytes(t, merged)

	img := imageXML(19, vid, "", incs, "")
	out := h.mustDriver(t, "restic", "increment_flatten", []string{"19"}, flattenStdin(img, ds, 1), genv...)
	m := regexp.MustCompile(`^[0-9]+ (1:[0-9a-f]{8})\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flatten printed %q", out)
	}
	kept := parseChain(t, m[1])
	// Read back as a restore would (the merged snapshot's path is private to the flatten).
	stored := resticRestore(t, fmt.Sprintf("%s/%d", base, vid), vid, kept, 0)
	after := dataBytes(t, stored)
	t.Logf("merged image data: %d MiB before virt-sparsify, %d MiB after", before>>20, after>>20)
	if after > before-32<<20 {
		t.Errorf("RESTIC_SPARSIFY=yes: the flattened image holds %d bytes of data, the merged one %d: the deleted file's blocks were not given back", after, before)
	}
	restored := filepath.Join(work, "restored.raw")
	run(t, "qemu-img", "convert", "-O", "raw", stored, restored)
	if out, err := runErr("e2fsck", "-fn", restored); err != nil {
		t.Errorf("the sparsified file system does not check clean: %s", out)
	}
	got, err := exec.Command("debugfs", "-R", "cat marker", restored).Output()
	want, _ := os.ReadFile(marker)
	if err != nil || string(got) != string(want) {
		t.Errorf("the marker file reads %q after sparsify, want %q", got, want)
	}
	if ls, _ := exec.Command("debugfs", "-R", "ls -l /", restored).Output(); strings.Contains(string(ls), " big") {
		t.Errorf("the deleted file is back: %s", ls)
	}
}
