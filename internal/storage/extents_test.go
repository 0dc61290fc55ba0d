package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// WriteQcow2 against the real qemu-img and qemu-io: the target holds data exactly where the
// source's data extents are (rounded out to 64 KiB clusters), zero clusters where its zero
// extents are, nothing elsewhere, and reads like the source there.
func TestWriteQcow2(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs qemu-utils)", tool)
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	const size = 4 << 20
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	extents := []Extent{
		{Offset: 0, Length: 64 << 10},                    // one whole cluster
		{Offset: 1 << 20, Length: 128 << 10, Zero: true}, // zeroed since the anchor
		{Offset: 2<<20 + 4096, Length: 4096},             // smaller than a cluster
		{Offset: 3 << 20, Length: 1 << 20},               // to the end
	}
	target := filepath.Join(dir, "disk.0.1")
	if err := WriteQcow2(context.Background(), Source{Format: "raw", Filename: src, Size: size, Extents: extents}, target); err != nil {
		t.Fatal(err)
	}
	m := allocation(t, target)
	type span struct {
		start, end int64
		data, zero bool
	}
	var got []span
	for _, e := range m {
		if !e.Present {
			continue // unallocated: reads through to the previous increment on restore
		}
		if n := len(got); n > 0 && got[n-1].end == e.Start && got[n-1].data == e.Data && got[n-1].zero == e.Zero {
			got[n-1].end += e.Length
			continue
		}
		got = append(got, span{e.Start, e.Start + e.Length, e.Data, e.Zero})
	}
	want := []span{
		{0, 64 << 10, true, false},
		{1 << 20, 1<<20 + 128<<10, false, true},
		{2 << 20, 2<<20 + 64<<10, true, false}, // the 4 KiB write fills its whole cluster
		{3 << 20, 4 << 20, true, false},
	}
	if len(got) != len(want) {
		t.Fatalf("allocation map %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("allocated range %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	info, _ := exec.Command("qemu-img", "info", target).Output()
	if bytes.Contains(info, []byte("backing file")) {
		t.Errorf("the target keeps a backing file:\n%s", info)
	}
	raw := filepath.Join(dir, "back.raw")
	if out, err := exec.Command("qemu-img", "convert", "-O", "raw", target, raw).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	back, _ := os.ReadFile(raw)
	for _, r := range want {
		for off := r.start; off < r.end; off++ {
			expect := data[off]
			if r.zero {
				expect = 0
			}
			if back[off] != expect {
				t.Fatalf("byte %d reads %d, want %d", off, back[off], expect)
			}
		}
	}
	// A failing source leaves no target behind.
	bad := filepath.Join(dir, "bad.qcow2")
	if err := WriteQcow2(context.Background(), Source{Format: "raw", Filename: filepath.Join(dir, "missing"), Size: size, Extents: extents}, bad); err == nil {
		t.Error("a missing source was written")
	}
	if _, err := os.Stat(bad); err == nil {
		t.Error("a failed write left its target")
	}
}

// A whole full with zero extents (a full inside a chain): one sequential copy, zero clusters
// over the zero extents, and zero-filled data kept as data (never left to read through).
func TestWriteQcow2Whole(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img is not installed (make deps installs qemu-utils)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i*13 + 1)
	}
	clear(data[2<<20 : 2<<20+64<<10]) // zero-filled data
	os.WriteFile(src, data, 0o644)
	target := filepath.Join(dir, "disk.0.3")
	ext := []Extent{{Offset: 0, Length: 1 << 20}, {Offset: 1 << 20, Length: 128 << 10, Zero: true}, {Offset: 1<<20 + 128<<10, Length: 3<<20 - 128<<10}}
	if err := WriteQcow2(context.Background(), Source{Format: "raw", Filename: src, Size: int64(len(data)), Extents: ext, Whole: true}, target); err != nil {
		t.Fatal(err)
	}
	m := allocation(t, target)
	for _, e := range m {
		inZero := e.Start >= 1<<20 && e.Start+e.Length <= 1<<20+128<<10
		switch {
		case !e.Present:
			t.Errorf("range %d+%d is unallocated: it would read through to the previous increment", e.Start, e.Length)
		case inZero && !e.Zero:
			t.Errorf("zero extent %d+%d is not a zero cluster", e.Start, e.Length)
		case !inZero && !e.Data:
			t.Errorf("range %d+%d is not data: %+v", e.Start, e.Length, e)
		}
	}
	raw := filepath.Join(dir, "back.raw")
	exec.Command("qemu-img", "convert", "-O", "raw", target, raw).Run()
	back, _ := os.ReadFile(raw)
	clear(data[1<<20 : 1<<20+128<<10])
	if !bytes.Equal(back, data) {
		t.Error("the whole full does not read as the source with the zero extent zeroed")
	}
}

// mapEntry is a range of `qemu-img map --output=json`.
type mapEntry struct {
	Start, Length       int64
	Present, Data, Zero bool
}

// allocation is the allocation map of a qcow2 image.
func allocation(t *testing.T, image string) []mapEntry {
	t.Helper()
	out, err := exec.Command("qemu-img", "map", "--output=json", "-f", "qcow2", image).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m []mapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}
