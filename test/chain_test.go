package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// diskChain builds the restore points of a VM's disks the way the host side does: a full qcow2
// image, then increments that are standalone qcow2 files holding only the clusters changed
// since the previous point (no backing file recorded), staged as disk.<disk>.<increment>. refs
// holds, per point and disk, a copy of the disk as the VM saw it.
type diskChain struct {
	vmID  int
	disks int
	work  string
	refs  [][]string // [point][disk]
}

func newDiskChain(t *testing.T, vmID, disks int) *diskChain {
	return &diskChain{vmID: vmID, disks: disks, work: t.TempDir()}
}

// next writes new data into every disk and stages restore point len(refs) in dir.
func (c *diskChain) next(t *testing.T, dir string) {
	t.Helper()
	point := len(c.refs)
	st := stageBackup(t, dir, c.vmID, point, nil, 0) // vm.xml only
	var refs []string
	for d := 0; d < c.disks; d++ {
		live := filepath.Join(c.work, fmt.Sprintf("live.%d", d))
		staged := filepath.Join(dir, fmt.Sprintf("disk.%d.%d", d, point))
		writes := []string{
			fmt.Sprintf("write -P 0x%02x %dM 1M", 0x10+point, (point*3)%30),
			fmt.Sprintf("write -P 0x%02x %dk 64k", 0x80+point+d, 40*1024+point*64),
		}
		if point > 1 {
			writes = append(writes, fmt.Sprintf("write -z %dM 512k", ((point-1)*3)%30)) // data removed since earlier points
		}
		if point == 0 {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", live, "64M")
			qemuIO(t, live, writes)
			run(t, "qemu-img", "convert", "-O", "qcow2", live, staged)
		} else {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", c.refs[point-1][d], "-F", "qcow2", staged)
			qemuIO(t, staged, writes)
			qemuIO(t, live, writes)
			run(t, "qemu-img", "rebase", "-u", "-b", "", staged)
		}
		ref := filepath.Join(c.work, fmt.Sprintf("ref.%d.%d", point, d))
		run(t, "qemu-img", "convert", "-O", "qcow2", live, ref)
		refs = append(refs, ref)
		_ = st
	}
	c.refs = append(c.refs, refs)
	chownOneadmin(t, dir)
}

func qemuIO(t *testing.T, img string, cmds []string) {
	t.Helper()
	args := []string{"qemu-io"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	run(t, append(args, img)...)
}

// rebuild restores a disk from its stored pieces (oldest first) with the recipe of the
// specification (§4.5): copies are rebased unsafely onto each other, the newest is converted.
func rebuild(t *testing.T, pieces []string) string {
	t.Helper()
	dir := t.TempDir()
	var local []string
	for i, p := range pieces {
		dst := filepath.Join(dir, fmt.Sprintf("piece.%d", i))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(dst, data, 0o644)
		if i > 0 {
			run(t, "qemu-img", "rebase", "-u", "-F", "qcow2", "-b", local[i-1], dst)
		}
		local = append(local, dst)
	}
	out := filepath.Join(dir, "restored")
	run(t, "qemu-img", "convert", "-O", "qcow2", local[len(local)-1], out)
	return out
}

// sameDisk compares two images' contents.
func sameDisk(t testing.TB, got, want, what string) {
	t.Helper()
	if out, err := runErr("qemu-img", "compare", "-q", got, want); err != nil {
		t.Errorf("%s differs from the disk at that point: %s", what, out)
	}
}

// flattenStdin is increment_flatten's stdin.
func flattenStdin(img, ds string, keepLast int) []byte {
	return dsMadStdin(img, ds, "<EXTRA_DATA><KEEP_LAST>"+strconv.Itoa(keepLast)+"</KEEP_LAST></EXTRA_DATA>")
}

// parseChain reads "0:a,1:b".
func parseChain(t *testing.T, s string) []inc {
	t.Helper()
	var out []inc
	for _, it := range strings.Split(strings.TrimSpace(s), ",") {
		id, snap, ok := strings.Cut(it, ":")
		n, err := strconv.Atoi(id)
		if !ok || err != nil {
			t.Fatalf("bad chain %q", s)
		}
		out = append(out, inc{n, snap})
	}
	return out
}
