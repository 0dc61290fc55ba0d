package qcow2

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func sh(t *testing.T, stdin string, argv ...string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(strings.ToLower(string(out)), "error") {
		t.Fatalf("%v: %v %s", argv, err, out)
	}
}

// rawDigest computes the digest from a raw image, 64 KiB at a time: the reference the qcow2
// reader is checked against.
func rawDigest(t *testing.T, raw string) Digest {
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	var d Digest
	for i := int64(0); i*65536 < int64(len(data)); i++ {
		if h, ok := blockHash(i, data[i*65536:min(int64(len(data)), (i+1)*65536)]); ok {
			d.add(h)
		}
	}
	return d
}

// increment makes an increment as the host side stores one: an overlay of prev written through
// qemu-io, whose backing reference is then dropped.
func increment(t *testing.T, prev, path, script string) {
	sh(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", prev, path)
	sh(t, "open -o driver=qcow2 "+path+"\n"+script+"quit\n", "qemu-io")
	sh(t, "", "qemu-img", "rebase", "-q", "-u", "-b", "", path)
}

func TestChainDigestIsWhatTheMergedImageHolds(t *testing.T) {
	dir := t.TempDir()
	f := func(n string) string { return filepath.Join(dir, n) }
	// A size that is not a whole number of clusters: the last cluster is cut.
	sh(t, "", "qemu-img", "create", "-q", "-f", "qcow2", f("disk.0.0"), "33587200")
	sh(t, "open -o driver=qcow2 "+f("disk.0.0")+"\nwrite -P 0x11 0 4M\nwrite -P 0x12 8M 1M\nwrite -P 0x13 33521664 65536\nquit\n", "qemu-io")
	increment(t, f("disk.0.0"), f("disk.0.1"), "write -P 0x21 1M 4096\nwrite -z 8M 512K\nwrite -P 0 2M 64K\nwrite -P 0x22 20M 100\n")
	increment(t, f("disk.0.1"), f("disk.0.2"), "write -P 0x31 1M 512\nwrite -z 0 64K\nwrite -P 0x32 8M 64K\n")
	chain := []string{f("disk.0.0"), f("disk.0.1"), f("disk.0.2")}

	for n := 1; n <= 3; n++ {
		want, geo, err := ChainDigest(chain[:n])
		if err != nil || geo != (Geometry{33587200, 65536}) {
			t.Fatalf("ChainDigest(%d files) = %v, %v, %v", n, want, geo, err)
		}
		args, _ := MergeArgs(chain[:n], f("merged"))
		os.Remove(f("merged"))
		sh(t, "", args...)
		got, _, err := ImageDigest(f("merged"))
		if err != nil || got != want {
			t.Errorf("restore point %d: merged image %v (%v), chain %v", n-1, got, err, want)
		}
		spec, _ := ChainSpec(chain[:n])
		os.Remove(f("raw"))
		sh(t, "", "qemu-img", "convert", "-O", "raw", spec, f("raw"))
		if raw := rawDigest(t, f("raw")); raw != want {
			t.Errorf("restore point %d: raw image %v, chain %v", n-1, raw, want)
		}
		// The same through RawDigest, after punching the zero blocks out (a sparse file).
		sh(t, "", "fallocate", "--dig-holes", f("raw"))
		if got, g, err := RawDigest(f("raw"), 65536); err != nil || got != want || g != geo {
			t.Errorf("restore point %d: RawDigest %v %v %v, chain %v", n-1, got, g, err, want)
		}
	}
	// One byte differs: the digests differ.
	sh(t, "open -o driver=qcow2 "+f("merged")+"\nwrite -P 0x23 20M 1\nquit\n", "qemu-io")
	want, _, _ := ChainDigest(chain)
	if got, _, _ := ImageDigest(f("merged")); got == want {
		t.Error("a changed byte leaves the digest unchanged")
	}
	// Files of another cluster size are not compared.
	sh(t, "", "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", f("small"), "33587200")
	if _, _, err := ChainDigest([]string{chain[0], f("small")}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("mixed cluster sizes: %v", err)
	}
	// Compressed clusters are not read.
	sh(t, "", "qemu-img", "convert", "-c", "-O", "qcow2", chain[0], f("compressed"))
	if _, _, err := ImageDigest(f("compressed")); !errors.Is(err, ErrUnsupported) {
		t.Errorf("compressed image: %v", err)
	}
	if _, _, err := ImageDigest(f("raw")); err == nil {
		t.Error("a raw file was read as qcow2")
	}
}

func FuzzReadHeader(f *testing.F) {
	dir := f.TempDir()
	img := filepath.Join(dir, "img")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "1M").CombinedOutput(); err == nil {
		data, _ := os.ReadFile(img)
		f.Add(data[:min(len(data), 4096)])
	} else {
		f.Logf("qemu-img: %v %s", err, out)
	}
	f.Add([]byte("QFI\xfb\x00\x00\x00\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := readFileLayer(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		l.clusters(func(int64, bool, []byte) error { return nil })
	})
}

// BenchmarkImageDigest is the cost of the merge check per byte of the merged image.
func BenchmarkImageDigest(b *testing.B) {
	img := filepath.Join(b.TempDir(), "img")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "256M").CombinedOutput(); err != nil {
		b.Fatal(err, string(out))
	}
	cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 128M", img)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatal(err, string(out))
	}
	b.SetBytes(128 << 20)
	for b.Loop() {
		if _, _, err := ImageDigest(img); err != nil {
			b.Fatal(err)
		}
	}
}
