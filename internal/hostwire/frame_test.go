package hostwire

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"
)

func TestFramedRoundTrip(t *testing.T) {
	data := make([]byte, 3*maxChunk+17)
	rand.New(rand.NewSource(1)).Read(data)
	var wire bytes.Buffer
	fw := NewFrameWriter(&wire)
	fw.Write(data[:5])
	fw.Write(data[5:])
	fw.Close()
	var out bytes.Buffer
	if n, err := CopyFramed(&out, bytes.NewReader(wire.Bytes())); err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("round trip: %d %v", n, err)
	}
	// Cut anywhere before the end marker is complete: truncated, never a silent short copy.
	for _, cut := range []int{0, 3, 4, 100, maxChunk + 4, wire.Len() - 9, wire.Len() - 1} {
		if _, err := CopyFramed(&bytes.Buffer{}, bytes.NewReader(wire.Bytes()[:cut])); !errors.Is(err, ErrTruncated) {
			t.Errorf("cut at %d: %v", cut, err)
		}
	}
	// An end marker that does not match what came is refused.
	bad := append([]byte(nil), wire.Bytes()...)
	bad[len(bad)-1] ^= 1
	if _, err := CopyFramed(&bytes.Buffer{}, bytes.NewReader(bad)); err == nil {
		t.Error("wrong total accepted")
	}
}

// FuzzCopyFramed: any byte stream is copied or refused; what is accepted as complete carries
// exactly the bytes its end marker announces.
func FuzzCopyFramed(f *testing.F) {
	var ok bytes.Buffer
	fw := NewFrameWriter(&ok)
	fw.Write([]byte("some image bytes"))
	fw.Close()
	f.Add(ok.Bytes())
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		n, err := CopyFramed(&out, bytes.NewReader(data))
		if err == nil && int64(out.Len()) != n {
			t.Fatalf("copied %d bytes, reported %d", out.Len(), n)
		}
	})
}
