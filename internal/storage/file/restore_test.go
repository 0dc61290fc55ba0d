package file

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"onebackup/internal/storage"
)

// A disk laid out as the qcow2 driver does gets a fresh disk.N.snap holding only the restored
// 0 and its self link, and disk.N points at it; a plain file is replaced.
func TestSwapInLayouts(t *testing.T) {
	vm := t.TempDir()
	snap := filepath.Join(vm, "disk.0.snap")
	os.Mkdir(snap, 0o755)
	os.WriteFile(filepath.Join(snap, "0"), []byte("old base"), 0o644)
	os.WriteFile(filepath.Join(snap, "1"), []byte("old top"), 0o644)
	os.Symlink(".", filepath.Join(snap, "disk.0.snap"))
	os.Symlink("disk.0.snap/1", filepath.Join(vm, "disk.0"))
	tmp := filepath.Join(snap, ".1"+storage.RestoreTempSuffix)
	os.WriteFile(tmp, []byte("restored 0"), 0o644)
	if err := (&restored{link: filepath.Join(vm, "disk.0"), target: filepath.Join(snap, "1"), tmp: tmp, snapsDir: snap}).Swap(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(vm, "disk.0")); string(b) != "restored 0" {
		t.Errorf("disk.0 reads %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(vm, "disk.0")); l != "disk.0.snap/0" {
		t.Errorf("disk.0 -> %q", l)
	}
	entries, _ := os.ReadDir(snap)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "0 disk.0.snap" {
		t.Errorf("disk.0.snap holds %v", names)
	}

	plain := filepath.Join(vm, "disk.1")
	os.WriteFile(plain, []byte("old"), 0o644)
	os.WriteFile(filepath.Join(vm, ".disk.1"+storage.RestoreTempSuffix), []byte("new"), 0o644)
	if err := (&restored{link: plain, target: plain, tmp: filepath.Join(vm, ".disk.1"+storage.RestoreTempSuffix)}).Swap(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "new" {
		t.Errorf("disk.1 reads %q", b)
	}
	left, _ := filepath.Glob(filepath.Join(vm, "*"+storage.RestoreTempSuffix+"*"))
	more, _ := filepath.Glob(filepath.Join(snap, "*"+storage.RestoreTempSuffix+"*"))
	if len(left)+len(more) > 0 {
		t.Errorf("left %v %v", left, more)
	}
}
