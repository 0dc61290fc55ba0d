package qcow2

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func qemu(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// A chain of a full image and two increments (overlays whose backing file was then dropped, as
// staged backups are) merges into the image the VM saw, and no input file changes.
func TestMergeChain(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make deps)")
	}
	d := t.TempDir()
	full, inc1, inc2 := filepath.Join(d, "disk.0.0"), filepath.Join(d, "disk.0.1"), filepath.Join(d, "disk.0.2")
	live := filepath.Join(d, "live.qcow2")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", live, "16M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 0 4M", live)
	qemu(t, "qemu-img", "convert", "-O", "qcow2", live, full)
	// increments: overlays on the previous point, holding only the new writes
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", full, "-F", "qcow2", inc1)
	qemu(t, "qemu-io", "-c", "write -P 0x22 1M 1M", inc1)
	qemu(t, "qemu-io", "-c", "write -P 0x22 1M 1M", live)
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", inc1, "-F", "qcow2", inc2)
	qemu(t, "qemu-io", "-c", "write -P 0x33 8M 64k", "-c", "write -z 0 64k", inc2)
	qemu(t, "qemu-io", "-c", "write -P 0x33 8M 64k", "-c", "write -z 0 64k", live)
	for _, f := range []string{inc1, inc2} {
		qemu(t, "qemu-img", "rebase", "-u", "-b", "", f) // stored increments record no backing
	}
	before := map[string][]byte{}
	for _, f := range []string{full, inc1, inc2} {
		before[f], _ = os.ReadFile(f)
	}
	dst := filepath.Join(d, "merged")
	args, err := MergeArgs([]string{full, inc1, inc2}, dst)
	if err != nil {
		t.Fatal(err)
	}
	qemu(t, args...)
	qemu(t, "qemu-img", "compare", "-q", dst, live)
	for f, data := range before {
		if now, _ := os.ReadFile(f); !bytes.Equal(now, data) {
			t.Errorf("%s was modified", f)
		}
	}
	// Up to increment 1 only.
	args, _ = MergeArgs([]string{full, inc1}, dst+"1")
	qemu(t, args...)
	ref := filepath.Join(d, "ref1")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", ref, "16M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 0 4M", "-c", "write -P 0x22 1M 1M", ref)
	qemu(t, "qemu-img", "compare", "-q", dst+"1", ref)
}

// Committing private copies gives the same image as MergeArgs.
func TestCommitChain(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make deps)")
	}
	d := t.TempDir()
	live := filepath.Join(d, "live")
	qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", live, "16M")
	qemu(t, "qemu-io", "-c", "write -P 0x11 0 4M", live)
	files := []string{filepath.Join(d, "f0"), filepath.Join(d, "f1"), filepath.Join(d, "f2")}
	qemu(t, "qemu-img", "convert", "-O", "qcow2", live, files[0])
	for i, w := range []string{"write -P 0x22 1M 1M", "write -z 0 64k"} {
		qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", files[i], "-F", "qcow2", files[i+1])
		qemu(t, "qemu-io", "-c", w, files[i+1])
		qemu(t, "qemu-io", "-c", w, live)
		qemu(t, "qemu-img", "rebase", "-u", "-b", "", files[i+1])
	}
	for _, argv := range CommitArgs(files) {
		qemu(t, argv...)
	}
	qemu(t, "qemu-img", "compare", "-q", files[0], live)
}
