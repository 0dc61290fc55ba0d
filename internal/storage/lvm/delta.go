package lvm

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"

	"onebackup/internal/storage"
)

// parseDelta turns thin_delta's report into the extents of an increment, in bytes, sorted and
// merged, clipped to the volume's size:
//
//   - "different" (both devices map the block, to different data) and "right_only" (only the
//     new snapshot maps it: written since the anchor) are data, read from the new snapshot;
//     a block rewritten with zeros is data too and is stored as such;
//   - "left_only" (only the anchor maps it) is a block discarded since the anchor: it reads as
//     zeros now and is stored as a zero range, so that the restored chain does not show the
//     anchor's old data there (OpenNebula ignores these ranges);
//   - "same" is unchanged.
//
// The report is read as a stream: its size grows with the number of ranges, not with the disk.
func parseDelta(r io.Reader, size int64) ([]storage.Extent, error) {
	dec := xml.NewDecoder(r)
	var block int64
	var ext []storage.Extent
	sawDiff := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("cannot read the thin_delta report: %w", err)
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch se.Name.Local {
		case "superblock":
			sectors, err := attrInt(se, "data_block_size")
			if err != nil || sectors <= 0 || sectors > 1<<21 {
				return nil, fmt.Errorf("thin_delta report: superblock has no valid data_block_size")
			}
			block = sectors * 512
		case "diff":
			sawDiff = true
		case "different", "right_only", "left_only":
			if block == 0 {
				return nil, fmt.Errorf("thin_delta report: a range before the superblock")
			}
			begin, err1 := attrInt(se, "begin")
			length, err2 := attrInt(se, "length")
			if err1 != nil || err2 != nil || begin < 0 || length <= 0 || begin > size/block+1 || length > size/block+1 {
				return nil, fmt.Errorf("thin_delta report: invalid %s range", se.Name.Local)
			}
			off, n := begin*block, length*block
			if off >= size {
				continue
			}
			n = min(n, size-off)
			ext = append(ext, storage.Extent{Offset: off, Length: n, Zero: se.Name.Local == "left_only"})
		case "same":
		default:
			return nil, fmt.Errorf("thin_delta report: unknown element <%s>", se.Name.Local)
		}
	}
	if block == 0 || !sawDiff {
		return nil, fmt.Errorf("thin_delta report has no superblock or no diff")
	}
	return mergeExtents(ext)
}

func attrInt(se xml.StartElement, name string) (int64, error) {
	for _, a := range se.Attr {
		if a.Name.Local == name {
			return strconv.ParseInt(a.Value, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s", name)
}

// mergeExtents sorts extents and joins neighbours of the same kind.
func mergeExtents(ext []storage.Extent) ([]storage.Extent, error) {
	sort.Slice(ext, func(i, j int) bool { return ext[i].Offset < ext[j].Offset })
	var out []storage.Extent
	for _, e := range ext {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if e.Offset < last.Offset+last.Length {
				// thin_delta never reports a block twice; a report that does is refused
				// rather than guessed at.
				return nil, fmt.Errorf("thin_delta report: overlapping ranges at byte %d", e.Offset)
			}
			if last.Zero == e.Zero && last.Offset+last.Length == e.Offset {
				last.Length += e.Length
				continue
			}
		}
		out = append(out, e)
	}
	return out, nil
}
