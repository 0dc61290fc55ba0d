// Package lvmsim is a thin pool for the tests of the LVM side, on machines without
// device-mapper (where no thin volume can be activated). It implements lvm.Host over files:
// every volume is a file holding its content, every thin device a block map as the pool's
// metadata would hold it. It records the commands it is asked to run (the plan the tests check)
// and applies them as LVM would, with LVM's errors for what LVM refuses. thin_delta is the real
// tool, run on metadata that the real thin_restore builds from the block maps, so the ranges
// the LVM side reads are the real tool's.
//
// Only tests import this package; production binaries never link it.
package lvmsim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"onebackup/internal/storage/lvm"
)

// BlockSize is the pool's data block size: 128 sectors, LVM's default for small pools.
const BlockSize = 64 << 10

// Sim is a set of volume groups.
type Sim struct {
	Dir  string // volume files and the lock directory live here
	mu   sync.Mutex
	plan []string
	vgs  map[string]map[string]*vol
	// per pool: next thin id and next data block, whether a metadata snapshot is reserved
	pools map[string]*pool
	// Fail makes the first command whose argv starts with this prefix fail (a fault to test).
	Fail string
}

type vol struct {
	name, pool, origin, segtype string
	thinID                      int
	size                        int64
	active                      bool
	blocks                      map[int64]int64 // thin: virtual block -> data block
}

type pool struct {
	nextThin     int
	nextData     int64
	metadataSnap bool
}

// New is an empty simulation under dir.
func New(dir string) *Sim {
	return &Sim{Dir: dir, vgs: map[string]map[string]*vol{}, pools: map[string]*pool{}}
}

// Plan returns the commands run since the last call, one line each.
func (s *Sim) Plan() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.plan
	s.plan = nil
	return p
}

func (s *Sim) record(line string) { s.plan = append(s.plan, line) }

// Note adds a line to the plan for something that happens outside LVM (the hypervisor
// quiescing the VM), so that the plan shows what ran inside that window.
func (s *Sim) Note(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.record(line)
}

func (s *Sim) path(vg, lv string) string { return filepath.Join(s.Dir, "dev", vg, lv) }

// parked is where an inactive volume's content is kept: its device node does not exist, so
// reading a volume that was not activated fails as it would on a host.
func (s *Sim) parked(vg, lv string) string { return filepath.Join(s.Dir, "inactive", vg, lv) }

func (s *Sim) file(vg string, v *vol) string {
	if v.active {
		return s.path(vg, v.name)
	}
	return s.parked(vg, v.name)
}

func (s *Sim) vg(name string) map[string]*vol {
	if s.vgs[name] == nil {
		s.vgs[name] = map[string]*vol{}
	}
	return s.vgs[name]
}

// CreatePool adds a thin pool of size bytes.
func (s *Sim) CreatePool(vg, name string, size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vg(vg)[name] = &vol{name: name, segtype: "thin-pool", thinID: -1, size: size, active: true}
	s.pools[vg+"/"+name] = &pool{nextThin: 1}
}

// CreateThin adds an empty active thin volume; CreateThick an active linear one.
func (s *Sim) CreateThin(vg, poolName, name string, size int64) error {
	return s.create(vg, &vol{name: name, pool: poolName, segtype: "thin", size: size, active: true, blocks: map[int64]int64{}})
}

func (s *Sim) CreateThick(vg, name string, size int64) error {
	return s.create(vg, &vol{name: name, segtype: "linear", thinID: -1, size: size, active: true})
}

func (s *Sim) create(vg string, v *vol) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v.pool != "" {
		p := s.pools[vg+"/"+v.pool]
		if p == nil {
			return fmt.Errorf("no pool %s/%s", vg, v.pool)
		}
		v.thinID = p.nextThin
		p.nextThin++
	}
	s.vg(vg)[v.name] = v
	f := s.file(vg, v)
	if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		return err
	}
	return os.Truncate(f, v.size)
}

// Deactivate makes a volume inactive (as after a host reboot).
func (s *Sim) Deactivate(vg, lv string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setActive(vg, lv, false)
}

// Write writes data at off (a guest write); a thin volume gets fresh data blocks for every block
// it touches, as a thin pool does for blocks shared with a snapshot.
func (s *Sim) Write(vg, lv string, off int64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vg(vg)[lv]
	if v == nil || !v.active {
		return fmt.Errorf("%s/%s is not an active volume", vg, lv)
	}
	if off < 0 || off+int64(len(data)) > v.size {
		return fmt.Errorf("write beyond the end of %s/%s", vg, lv)
	}
	f, err := os.OpenFile(s.file(vg, v), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(v.size); err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		return err
	}
	if v.blocks != nil {
		p := s.pools[vg+"/"+v.pool]
		for b := off / BlockSize; b*BlockSize < off+int64(len(data)); b++ {
			v.blocks[b] = p.nextData
			p.nextData++
		}
	}
	return nil
}

// Discard unmaps whole blocks from off (block-aligned), which then read as zeros (fstrim,
// blkdiscard in the guest).
func (s *Sim) Discard(vg, lv string, off, length int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vg(vg)[lv]
	if v == nil || !v.active || v.blocks == nil || off%BlockSize != 0 || length%BlockSize != 0 {
		return fmt.Errorf("cannot discard %d+%d of %s/%s", off, length, vg, lv)
	}
	f, err := os.OpenFile(s.file(vg, v), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, length), off); err != nil {
		return err
	}
	for b := off / BlockSize; b < (off+length)/BlockSize; b++ {
		delete(v.blocks, b)
	}
	return nil
}

// Content reads a volume's whole content (what a restore must equal).
func (s *Sim) Content(vg, lv string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vg(vg)[lv]
	if v == nil {
		return nil, fmt.Errorf("no volume %s/%s", vg, lv)
	}
	data, err := os.ReadFile(s.file(vg, v))
	if err != nil {
		return nil, err
	}
	return append(data, make([]byte, v.size-int64(len(data)))...), nil
}

// Names lists a VG's volumes, sorted.
func (s *Sim) Names(vg string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.vg(vg) {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Active tells whether a volume is active.
func (s *Sim) Active(vg, lv string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vg(vg)[lv]
	return v != nil && v.active
}

// MetadataSnap tells whether a pool's metadata snapshot is reserved.
func (s *Sim) MetadataSnap(vg, poolName string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[vg+"/"+poolName]
	return p != nil && p.metadataSnap
}

// Report implements lvm.Host: the JSON lvs prints, for the same fields.
func (s *Sim) Report(ctx context.Context, vg string) ([]lvm.Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vols, ok := s.vgs[vg]
	if !ok {
		return nil, fmt.Errorf("Volume group %q not found", vg)
	}
	var lvs []map[string]string
	for _, name := range sortedNames(vols) {
		v := vols[name]
		m := map[string]string{"lv_name": v.name, "vg_name": vg, "pool_lv": v.pool, "thin_id": "",
			"lv_size": strconv.FormatInt(v.size, 10), "lv_active": "", "origin": v.origin, "segtype": v.segtype}
		if v.thinID >= 0 {
			m["thin_id"] = strconv.Itoa(v.thinID)
		}
		if v.active {
			m["lv_active"] = "active"
		}
		lvs = append(lvs, m)
	}
	doc := map[string]any{"report": []any{map[string]any{"lv": lvs}}}
	out, _ := json.Marshal(doc)
	return lvm.ParseReport(out)
}

func sortedNames(m map[string]*vol) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Change implements lvm.Host for the commands the LVM side runs.
func (s *Sim) Change(ctx context.Context, argv ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := strings.Join(argv, " ")
	s.record(line)
	if s.Fail != "" && strings.HasPrefix(line, s.Fail) {
		s.Fail = ""
		return fmt.Errorf("%s failed: injected fault", argv[0])
	}
	a := argv
	switch {
	case len(a) == 5 && a[0] == "lvcreate" && a[1] == "-s" && a[2] == "-n":
		vg, lv, _ := strings.Cut(a[4], "/")
		return s.snapshot(vg, lv, a[3])
	case len(a) == 4 && a[0] == "lvchange" && a[1] == "-K" && (a[2] == "-ay" || a[2] == "-an"):
		vg, lv, _ := strings.Cut(a[3], "/")
		return s.setActive(vg, lv, a[2] == "-ay")
	case len(a) == 3 && a[0] == "lvremove" && a[1] == "-y":
		vg, lv, _ := strings.Cut(a[2], "/")
		v := s.vg(vg)[lv]
		if v == nil {
			return fmt.Errorf("Failed to find logical volume \"%s\"", a[2])
		}
		os.Remove(s.file(vg, v))
		delete(s.vg(vg), lv)
		return nil
	case len(a) == 4 && a[0] == "lvextend" && a[1] == "-L" && strings.HasSuffix(a[2], "B"):
		vg, lv, _ := strings.Cut(a[3], "/")
		n, err := strconv.ParseInt(strings.TrimSuffix(a[2], "B"), 10, 64)
		v := s.vg(vg)[lv]
		if err != nil || v == nil || n < v.size {
			return fmt.Errorf("lvextend: bad size or volume: %s", line)
		}
		v.size = n
		return nil
	case len(a) == 5 && a[0] == "dmsetup" && a[1] == "message" && a[3] == "0":
		p := s.poolOfTpool(a[2])
		if p == nil {
			return fmt.Errorf("device-mapper: message ioctl on %s failed: No such device or address", a[2])
		}
		switch a[4] {
		case "reserve_metadata_snap":
			if p.metadataSnap {
				return fmt.Errorf("device-mapper: message ioctl on %s failed: Invalid argument", a[2])
			}
			p.metadataSnap = true
			return nil
		case "release_metadata_snap":
			if !p.metadataSnap {
				return fmt.Errorf("device-mapper: message ioctl on %s failed: Invalid argument", a[2])
			}
			p.metadataSnap = false
			return nil
		}
	}
	return fmt.Errorf("lvmsim: command not modelled: %s", line)
}

func (s *Sim) poolOfTpool(dev string) *pool {
	for key, p := range s.pools {
		vg, name, _ := strings.Cut(key, "/")
		if lvm.DeviceOf(vg, name, "tpool") == dev {
			return p
		}
	}
	return nil
}

func (s *Sim) setActive(vg, lv string, on bool) error {
	v := s.vg(vg)[lv]
	if v == nil {
		return fmt.Errorf("Failed to find logical volume \"%s/%s\"", vg, lv)
	}
	if v.active == on {
		return nil
	}
	from := s.file(vg, v)
	v.active = on
	to := s.file(vg, v)
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.Rename(from, to)
}

// snapshot creates a thin snapshot: a new thin device sharing every block of the origin, with
// activation skipped (so it is inactive), as lvcreate -s of a thin volume does.
func (s *Sim) snapshot(vg, lv, name string) error {
	o := s.vg(vg)[lv]
	if o == nil {
		return fmt.Errorf("Failed to find logical volume \"%s/%s\"", vg, lv)
	}
	if s.vg(vg)[name] != nil {
		return fmt.Errorf("Logical Volume \"%s\" already exists in volume group \"%s\"", name, vg)
	}
	if o.blocks == nil {
		return fmt.Errorf("Snapshots of a linear volume need a size (-L): %s/%s is not thin", vg, lv)
	}
	p := s.pools[vg+"/"+o.pool]
	v := &vol{name: name, pool: o.pool, origin: lv, segtype: "thin", thinID: p.nextThin, size: o.size, blocks: map[int64]int64{}}
	p.nextThin++
	for b, d := range o.blocks {
		v.blocks[b] = d
	}
	s.vg(vg)[name] = v
	if err := os.MkdirAll(filepath.Dir(s.file(vg, v)), 0o755); err != nil {
		return err
	}
	return copySparse(s.file(vg, o), s.file(vg, v), o.size)
}

func copySparse(src, dst string, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	buf := make([]byte, BlockSize)
	zero := make([]byte, BlockSize)
	for off := int64(0); ; off += BlockSize {
		n, err := in.ReadAt(buf, off)
		if n > 0 && !bytes.Equal(buf[:n], zero[:n]) {
			if _, werr := out.WriteAt(buf[:n], off); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return out.Truncate(size)
}

// Delta implements lvm.Host: the real thin_delta on metadata the real thin_restore writes from
// the pool's block maps. The plan shows the command the LVM side asked for; it runs without
// --metadata-snap, since thin_restore writes metadata without a metadata snapshot.
func (s *Sim) Delta(ctx context.Context, tmeta string, from, to int, w io.Writer) error {
	s.mu.Lock()
	s.record(fmt.Sprintf("thin_delta --metadata-snap --thin1 %d --thin2 %d %s", from, to, tmeta))
	var poolKey string
	for key := range s.pools {
		vg, name, _ := strings.Cut(key, "/")
		if lvm.DeviceOf(vg, name, "tmeta") == tmeta {
			poolKey = key
		}
	}
	p := s.pools[poolKey]
	if p == nil {
		s.mu.Unlock()
		return fmt.Errorf("thin_delta: %s: No such file or directory", tmeta)
	}
	if !p.metadataSnap {
		s.mu.Unlock()
		return fmt.Errorf("thin_delta: no current metadata snap")
	}
	vg, poolName, _ := strings.Cut(poolKey, "/")
	xml := s.metadataXML(vg, poolName, p)
	s.mu.Unlock()

	dir, err := os.MkdirTemp(s.Dir, "meta")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	meta := filepath.Join(dir, "tmeta")
	if err := os.WriteFile(meta+".xml", []byte(xml), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(meta, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(meta, 8<<20); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "thin_restore", "-i", meta+".xml", "-o", meta).CombinedOutput(); err != nil {
		return fmt.Errorf("thin_restore: %v: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, "thin_delta", "--thin1", strconv.Itoa(from), "--thin2", strconv.Itoa(to), meta)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = w, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("thin_delta: %v: %s", err, errb.String())
	}
	return nil
}

// MetadataXML is the pool's metadata in thin_restore's XML, for tests that run thin_delta
// themselves.
func (s *Sim) MetadataXML(vg, poolName string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metadataXML(vg, poolName, s.pools[vg+"/"+poolName])
}

func (s *Sim) metadataXML(vg, poolName string, p *pool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"%d\" nr_data_blocks=\"%d\">\n",
		BlockSize/512, p.nextData+1024)
	for _, name := range sortedNames(s.vg(vg)) {
		v := s.vg(vg)[name]
		if v.pool != poolName || v.blocks == nil {
			continue
		}
		fmt.Fprintf(&b, "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n", v.thinID, len(v.blocks))
		var keys []int64
		for k := range v.blocks {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
		for _, k := range keys {
			fmt.Fprintf(&b, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", k, v.blocks[k])
		}
		b.WriteString("  </device>\n")
	}
	b.WriteString("</superblock>\n")
	return b.String()
}

// Device implements lvm.Host: volumes are files; a pool's hidden nodes keep their real names.
func (s *Sim) Device(vg, lv, sub string) string {
	if sub != "" {
		return lvm.DeviceOf(vg, lv, sub)
	}
	return s.path(vg, lv)
}

// Lock implements lvm.Host with the real lock file under Dir/lock, and records it.
func (s *Sim) Lock(ctx context.Context, vg string) (func(), error) {
	unlock, err := (&lvm.System{LockDir: filepath.Join(s.Dir, "lock")}).Lock(ctx, vg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.record("lock " + lvm.LockName(vg))
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.record("unlock " + lvm.LockName(vg))
		s.mu.Unlock()
		unlock()
	}, nil
}
