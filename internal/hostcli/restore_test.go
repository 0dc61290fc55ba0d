package hostcli

import (
	"archive/tar"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTarGz(t *testing.T, p string, members map[string]string) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	for name, data := range members {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write([]byte(data))
	}
	tw.Close()
	zw.Close()
	f.Close()
}

// The vTPM archive comes from a backup: members outside tpm/ are refused, never written.
func TestUntarTPMStaysInItsDirectory(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.tgz")
	writeTarGz(t, good, map[string]string{"tpm/tpm2-00.permall": "state"})
	if err := untarTPM(good, filepath.Join(dir, "out")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "out/tpm/tpm2-00.permall")); string(b) != "state" {
		t.Errorf("extracted %q", b)
	}
	for _, name := range []string{"../evil", "tpm/../../evil", "/etc/evil", "other/x"} {
		bad := filepath.Join(dir, "bad.tgz")
		writeTarGz(t, bad, map[string]string{name: "x"})
		if err := untarTPM(bad, filepath.Join(dir, "out2")); err == nil {
			t.Errorf("member %q accepted", name)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "evil")); err == nil {
		t.Error("a member escaped the directory")
	}
}

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
	tmp := filepath.Join(snap, ".1"+restoreTemp)
	os.WriteFile(tmp, []byte("restored 0"), 0o644)
	if err := swapIn(&newImage{id: 0, link: filepath.Join(vm, "disk.0"), target: filepath.Join(snap, "1"), tmp: tmp, snapsDir: snap}); err != nil {
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
	os.WriteFile(filepath.Join(vm, ".disk.1"+restoreTemp), []byte("new"), 0o644)
	if err := swapIn(&newImage{id: 1, link: plain, target: plain, tmp: filepath.Join(vm, ".disk.1"+restoreTemp)}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(plain); string(b) != "new" {
		t.Errorf("disk.1 reads %q", b)
	}
	if err := abortRestore(vm); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(vm, "*"+restoreTemp+"*"))
	if len(left) > 0 {
		t.Errorf("left %v", left)
	}
}
