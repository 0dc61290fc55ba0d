package rbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ceph/go-ceph/rbd"

	"onebackup/internal/one"
	"onebackup/internal/storage"
)

// qemuFilename names an image (at a snapshot) for QEMU's rbd driver, with the disk's
// credentials. QEMU splits this string on ':' and '@' and unescapes '\', so those characters
// in a configuration or key path are escaped.
func qemuFilename(img one.RBDImage, snap string) string {
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`, `@`, `\@`).Replace
	var b strings.Builder
	b.WriteString("rbd:" + esc(img.Pool) + "/" + esc(img.Image))
	if snap != "" {
		b.WriteString("@" + esc(snap))
	}
	if img.CephUser != "" {
		b.WriteString(":id=" + esc(img.CephUser))
	}
	if img.CephConf != "" {
		b.WriteString(":conf=" + esc(img.CephConf))
	}
	if img.CephKey != "" {
		b.WriteString(":keyfile=" + esc(img.CephKey))
	}
	return b.String()
}

// changes lists the extents of im (opened at the new snapshot) that differ from snapshot from:
// data that was written, and ranges that now read as zeros (discarded, zeroed, or beyond a
// shrunk end). Adjacent extents of one kind are merged, so that a guest writing every other
// block does not produce one request per block. Memory is 24 bytes per merged extent.
func changes(im *rbd.Image, from string, size uint64) ([]storage.Extent, error) {
	var out []storage.Extent
	err := im.DiffIterate(rbd.DiffIterateConfig{
		SnapName:      from,
		Offset:        0,
		Length:        size,
		IncludeParent: rbd.IncludeParent,
		WholeObject:   rbd.DisableWholeObject,
		Callback: func(off, length uint64, exists int, _ interface{}) int {
			e := storage.Extent{Offset: int64(off), Length: int64(length), Zero: exists == 0}
			if n := len(out); n > 0 && out[n-1].Zero == e.Zero && out[n-1].Offset+out[n-1].Length == e.Offset {
				out[n-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			return 0
		},
	})
	if err != nil {
		return nil, fmt.Errorf("computing the changes of %s since %s: %w", im.GetName(), from, err)
	}
	return out, nil
}

// The rbd diff format (what `rbd export-diff` writes and `rbd import-diff` reads) continues
// chains OpenNebula ≤ 7.0 started as .rbd2 + .rbdiff files. Version 1: a banner, then records
// of a one-byte tag and little-endian fields: 'f'/'t' the from/to snapshot names (u32 length +
// bytes), 's' the image size (u64), 'w' data (u64 offset, u64 length, the bytes), 'z' a range
// that reads as zeros (u64 offset, u64 length), 'e' the end.
const rbdiffBanner = "rbd diff v1\n"

// copyChunk bounds the memory a 'w' record's data takes while it is copied.
const copyChunk = 4 << 20

// writeRBDiff writes the changes of im (opened at snapshot to) since snapshot from to out.
func writeRBDiff(ctx context.Context, im *rbd.Image, from, to string, out string) (err error) {
	size, err := im.GetSize()
	if err != nil {
		return err
	}
	ext, err := changes(im, from, size)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(out)
		}
	}()
	return encodeRBDiff(ctx, f, im, from, to, size, ext)
}

// encodeRBDiff streams an rbd diff of the extents of src: one buffer of copyChunk bytes
// whatever the number or size of the extents.
func encodeRBDiff(ctx context.Context, out io.Writer, src io.ReaderAt, from, to string, size uint64, ext []storage.Extent) error {
	w := bufio.NewWriterSize(out, 1<<20)
	le := binary.LittleEndian
	name := func(tag byte, s string) {
		w.WriteByte(tag)
		w.Write(le.AppendUint32(nil, uint32(len(s))))
		w.WriteString(s)
	}
	rng := func(tag byte, e storage.Extent) {
		w.WriteByte(tag)
		w.Write(le.AppendUint64(le.AppendUint64(nil, uint64(e.Offset)), uint64(e.Length)))
	}
	w.WriteString(rbdiffBanner)
	if from != "" {
		name('f', from)
	}
	name('t', to)
	w.WriteByte('s')
	w.Write(le.AppendUint64(nil, size))
	buf := make([]byte, copyChunk)
	for _, e := range ext {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.Zero {
			rng('z', e)
			continue
		}
		rng('w', e)
		for off := e.Offset; off < e.Offset+e.Length; {
			n := min(int64(len(buf)), e.Offset+e.Length-off)
			// ReaderAt: a full read may come with io.EOF; a short one always has an error.
			if got, err := src.ReadAt(buf[:n], off); int64(got) < n {
				return fmt.Errorf("reading at %d: %w", off, err)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			off += n
		}
	}
	w.WriteByte('e')
	return w.Flush()
}
