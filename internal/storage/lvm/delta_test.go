package lvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"onebackup/internal/storage"
)

// thinRestore writes pool metadata from thin_restore's XML with the real tool and returns the
// real thin_delta's report between two thin devices.
func thinDelta(t *testing.T, xml string, from, to string) []byte {
	t.Helper()
	dir := t.TempDir()
	meta := filepath.Join(dir, "tmeta")
	if err := os.WriteFile(meta+".xml", []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(meta, make([]byte, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(meta, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("thin_restore", "-i", meta+".xml", "-o", meta).CombinedOutput(); err != nil {
		t.Fatalf("thin_restore (installed by make deps-lvm): %v: %s", err, out)
	}
	out, err := exec.Command("thin_delta", "--thin1", from, "--thin2", to, meta).Output()
	if err != nil {
		t.Fatalf("thin_delta: %v", err)
	}
	return out
}

// Device 1 is the chain's anchor, device 2 the new snapshot; the mappings describe what the
// guest did in between (data blocks as a thin pool allocates them: a block written after the
// snapshot gets a new data block).
const poolXML = `<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="4096">
  <device dev_id="1" mapped_blocks="11" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="10" time="0"/>
    <single_mapping origin_block="12" data_block="12" time="0"/>
    <range_mapping origin_begin="20" data_begin="20" length="2" time="0"/>
    <single_mapping origin_block="30" data_block="30" time="0"/>
    <range_mapping origin_begin="40" data_begin="40" length="2" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="12" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="100" time="1"/>
    <single_mapping origin_block="3" data_block="3" time="0"/>
    <single_mapping origin_block="10" data_block="101" time="1"/>
    <single_mapping origin_block="15" data_block="102" time="1"/>
    <single_mapping origin_block="30" data_block="30" time="0"/>
    <range_mapping origin_begin="31" data_begin="103" length="2" time="1"/>
    <single_mapping origin_block="40" data_block="105" time="1"/>
    <single_mapping origin_block="41" data_block="106" time="1"/>
    <single_mapping origin_block="43" data_block="107" time="1"/>
  </device>
</superblock>
`

// The ranges the LVM side derives from the real thin_delta: rewrites (2), blocks rewritten with
// zeros (10: mapped to new data, read from the snapshot as zeros), new writes (15, 31-32, 43,
// merged with the rewrites 40-41 they touch), discards (12, 20-21: the anchor maps them, the
// new snapshot not: they read as zeros now and must be stored as zeros), and nothing for
// unchanged blocks (0-1, 3, 30). The volume ends half-way through block 43.
func TestLVMThinDeltaRanges(t *testing.T) {
	const b = 64 << 10
	size := int64(43*b + b/2)
	report := thinDelta(t, poolXML, "1", "2")
	got, err := parseDelta(bytes.NewReader(report), size)
	if err != nil {
		t.Fatalf("%v\n%s", err, report)
	}
	want := []storage.Extent{
		{Offset: 2 * b, Length: b},
		{Offset: 10 * b, Length: b},
		{Offset: 12 * b, Length: b, Zero: true},
		{Offset: 15 * b, Length: b},
		{Offset: 20 * b, Length: 2 * b, Zero: true},
		{Offset: 31 * b, Length: 2 * b},
		{Offset: 40 * b, Length: 2 * b},
		{Offset: 43 * b, Length: b / 2},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ranges\n%v\nwant\n%v\nfrom\n%s", got, want, report)
	}
	// The other way round, discards and new writes swap roles.
	back, err := parseDelta(bytes.NewReader(thinDelta(t, poolXML, "2", "1")), size)
	if err != nil {
		t.Fatal(err)
	}
	zeros := 0
	for _, e := range back {
		if e.Zero {
			zeros++
		}
	}
	if zeros != 3 { // 15, 31-32, 43
		t.Errorf("reverse ranges %v", back)
	}
}

// Reports that are not thin_delta's are refused, never half-used.
func TestLVMThinDeltaRefusesGarbage(t *testing.T) {
	for _, in := range []string{
		"",
		"<superblock/>",
		`<superblock data_block_size="128"><diff><different begin="1" length="1"/><different begin="1" length="1"/></diff></superblock>`,
		`<superblock data_block_size="0"><diff/></superblock>`,
		`<superblock data_block_size="128"><diff><different begin="-1" length="1"/></diff></superblock>`,
		`<superblock data_block_size="128"><diff><exotic begin="1" length="1"/></diff></superblock>`,
		`<superblock data_block_size="128"><diff><right_only begin="1" length="99999999999"/></diff></superblock>`,
		`<superblock data_block_size="128"><diff><right_only begin="1"`,
	} {
		if ext, err := parseDelta(strings.NewReader(in), 64<<20); err == nil {
			t.Errorf("accepted %q as %v", in, ext)
		}
	}
}

func FuzzParseDelta(f *testing.F) {
	f.Add([]byte(`<superblock data_block_size="128"><diff left="1" right="2"><same begin="0" length="2"/><different begin="2" length="1"/><left_only begin="12" length="1"/><right_only begin="20" length="1"/></diff></superblock>`))
	f.Add([]byte(`<superblock data_block_size="1024"><diff><right_only begin="0" length="1"/></diff></superblock>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		const size = 64 << 20
		ext, err := parseDelta(bytes.NewReader(data), size)
		if err != nil {
			return
		}
		var end int64
		for _, e := range ext {
			if e.Offset < end || e.Length <= 0 || e.Offset+e.Length > size {
				t.Fatalf("bad extents %v", ext)
			}
			end = e.Offset + e.Length
		}
	})
}
