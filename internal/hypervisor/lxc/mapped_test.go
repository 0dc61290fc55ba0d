package lxc

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A fake /sys and /proc under a temporary root, laid out as the kernel shows a loop device
// backed by one image and an nbd device whose qemu-nbd holds another.
func TestMappedBy(t *testing.T) {
	root := t.TempDir()
	mk := func(p, content string) {
		p = filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("vm/disk.0", "raw")
	mk("vm/disk.1", "qcow2")
	mk("vm/disk.2", "other")
	os.Symlink("disk.0", filepath.Join(root, "vm/link.0"))
	mk("sys/block/loop3/loop/backing_file", "/vm/disk.0\n")
	mk("sys/block/loop4/loop/backing_file", "/gone (deleted)\n")
	mk("sys/block/nbd1/pid", "4242\n")
	os.MkdirAll(filepath.Join(root, "sys/block/nbd2"), 0o755) // not connected: no pid file
	os.MkdirAll(filepath.Join(root, "proc/4242/fd"), 0o755)
	os.Symlink(filepath.Join(root, "vm/disk.1"), filepath.Join(root, "proc/4242/fd/7"))

	for file, want := range map[string][]string{
		"vm/link.0": {"/dev/loop3"},
		"vm/disk.0": {"/dev/loop3"},
		"vm/disk.1": {"/dev/nbd1 served by qemu-nbd 4242"},
		"vm/disk.2": nil,
	} {
		got, err := mappedBy(root, filepath.Join(root, file))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("mappedBy(%s) = %v, %v; want %v", file, got, err, want)
		}
	}
	if _, err := mappedBy(root, filepath.Join(root, "vm/missing")); err == nil {
		t.Error("a missing image was not reported")
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/var/lib/one/datastores/0/5/mapper/disk\0400`); got != "/var/lib/one/datastores/0/5/mapper/disk 0" {
		t.Errorf("got %q", got)
	}
}
