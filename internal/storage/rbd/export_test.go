package rbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand"
	"testing"

	"onebackup/internal/one"
	"onebackup/internal/storage"
)

func TestQemuFilenameEscapes(t *testing.T) {
	img := one.RBDImage{Pool: "one", Image: "one-7-3-0", CephUser: "oneadmin", CephConf: "/etc/ceph/a:b@c.conf", CephKey: `/k\ey`}
	got := qemuFilename(img, "one_backup_2")
	want := `rbd:one/one-7-3-0@one_backup_2:id=oneadmin:conf=/etc/ceph/a\:b\@c.conf:keyfile=/k\\ey`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := qemuFilename(one.RBDImage{Pool: "p", Image: "i"}, ""); got != "rbd:p/i" {
		t.Errorf("no credentials, head: %s", got)
	}
}

func TestAnchorNames(t *testing.T) {
	for name, want := range map[string]int{"one_backup_0": 0, "one_backup_17": 17} {
		if n, ok := anchorID(name); !ok || n != want {
			t.Errorf("%s: %d %v", name, n, ok)
		}
	}
	// The temporary snapshot, users' snapshots and look-alikes are never anchors.
	for _, name := range []string{"one_backup", "one_backup_", "one_backup_1a", "my_one_backup_1", "one_backup_-1", "snap-3"} {
		if _, ok := anchorID(name); ok {
			t.Errorf("%s taken for an anchor", name)
		}
	}
	if anchor(4) != "one_backup_4" {
		t.Error(anchor(4))
	}
}

// decodeRBDiff reads an rbd diff v1 stream back, applying it over base.
func decodeRBDiff(t *testing.T, data []byte, base []byte) (from, to string, out []byte) {
	t.Helper()
	r := bytes.NewReader(data)
	banner := make([]byte, len(rbdiffBanner))
	io.ReadFull(r, banner)
	if string(banner) != rbdiffBanner {
		t.Fatalf("banner %q", banner)
	}
	out = append([]byte(nil), base...)
	le := binary.LittleEndian
	u32 := func() uint32 { b := make([]byte, 4); io.ReadFull(r, b); return le.Uint32(b) }
	u64 := func() uint64 { b := make([]byte, 8); io.ReadFull(r, b); return le.Uint64(b) }
	for {
		tag, err := r.ReadByte()
		if err != nil {
			t.Fatalf("no end record: %v", err)
		}
		switch tag {
		case 'f', 't':
			b := make([]byte, u32())
			io.ReadFull(r, b)
			if tag == 'f' {
				from = string(b)
			} else {
				to = string(b)
			}
		case 's':
			size := u64()
			out = append(out[:min(uint64(len(out)), size)], make([]byte, size-min(uint64(len(out)), size))...)
		case 'w':
			off, n := u64(), u64()
			if _, err := io.ReadFull(r, out[off:off+n]); err != nil {
				t.Fatal(err)
			}
		case 'z':
			off, n := u64(), u64()
			clear(out[off : off+n])
		case 'e':
			if r.Len() != 0 {
				t.Fatalf("%d bytes after the end record", r.Len())
			}
			return
		default:
			t.Fatalf("unknown record %q", tag)
		}
	}
}

// An rbd diff of data and zero extents, some larger than the copy buffer, rebuilds the new image
// from the old one.
func TestEncodeRBDiff(t *testing.T) {
	const size = 3*copyChunk + 12345
	rnd := rand.New(rand.NewSource(1))
	oldImg, newImg := make([]byte, size), make([]byte, size)
	rnd.Read(oldImg)
	copy(newImg, oldImg)
	ext := []storage.Extent{
		{Offset: 0, Length: 512},
		{Offset: 4096, Length: 65536, Zero: true},
		{Offset: copyChunk - 100, Length: 2*copyChunk + 300},
		{Offset: size - 45, Length: 45, Zero: true},
	}
	for _, e := range ext {
		if e.Zero {
			clear(newImg[e.Offset : e.Offset+e.Length])
		} else {
			rnd.Read(newImg[e.Offset : e.Offset+e.Length])
		}
	}
	var buf bytes.Buffer
	if err := encodeRBDiff(context.Background(), &buf, bytes.NewReader(newImg), "one_backup_3", "one_backup_4", size, ext); err != nil {
		t.Fatal(err)
	}
	from, to, got := decodeRBDiff(t, buf.Bytes(), oldImg)
	if from != "one_backup_3" || to != "one_backup_4" || !bytes.Equal(got, newImg) {
		t.Errorf("from %q to %q, image equal: %v", from, to, bytes.Equal(got, newImg))
	}
	// A source shorter than an extent is an error, not garbage in the diff.
	if err := encodeRBDiff(context.Background(), io.Discard, bytes.NewReader(newImg[:100]), "a", "b", size, ext[:1]); err == nil {
		t.Error("short read accepted")
	}
}
