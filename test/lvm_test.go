package test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"onebackup/internal/hostjob"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage/lvm"
	"onebackup/internal/storage/lvm/lvmsim"
)

// The LVM data path: device-mapper does not run here, so a simulated thin pool (lvmsim: a file
// per volume, the real thin_restore and thin_delta for the changed ranges) stands in for the
// host's LVM. Everything after the volume's device is real: the LVM side writes the full and the
// increments from the snapshot's "device" with qemu-img and qemu-io, the datastore's backup
// action uploads them, and the datastore's downloader restores every point, which must equal
// the volume at that point byte for byte — including blocks zeroed and blocks discarded between
// two increments, which OpenNebula's own thin increments restore with stale data (W-9).

type quietHV struct{}

func (quietHV) Name() matrix.Hypervisor                                { return matrix.KVM }
func (quietHV) Recover(ctx context.Context, j *hostjob.Job) error      { return nil }
func (quietHV) CheckStopped(ctx context.Context, j *hostjob.Job) error { return nil }
func (quietHV) Quiesce(ctx context.Context, j *hostjob.Job) (func() error, error) {
	return func() error { return nil }, nil
}

type lvmChain struct {
	sim    *lvmsim.Sim
	st     *lvm.LVM
	vmID   int
	vg, lv string
	points []string // the volume's content at each backup point (raw files)
}

func newLVMChain(t *testing.T, vmID int) *lvmChain {
	c := &lvmChain{sim: lvmsim.New(t.TempDir()), vmID: vmID, vg: "vg-one-0", lv: fmt.Sprintf("lv-one-%d-0", vmID)}
	c.st = lvm.New(c.sim)
	pool := fmt.Sprintf("lv-one-%d-pool", vmID)
	c.sim.CreatePool(c.vg, pool, 64<<20)
	if err := c.sim.CreateThin(c.vg, pool, c.lv, 8<<20); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *lvmChain) write(t *testing.T, off int64, data []byte) {
	t.Helper()
	if err := c.sim.Write(c.vg, c.lv, off, data); err != nil {
		t.Fatal(err)
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// backup takes increment inc (li = inc-1) of a live thin chain into the staging directory, runs
// the datastore's backup action, and postbackup with its result.
func (c *lvmChain) backup(t *testing.T, inc int, upload func() string) string {
	t.Helper()
	dec, err := matrix.Resolve(matrix.Request{Hypervisor: matrix.KVM, Storage: matrix.LVMThin, Incremental: true, Live: true,
		FSFreeze: "NONE", OptIns: []string{matrix.LVMThinIncrements}})
	if err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("/var/lib/one/datastores/0/%d", c.vmID)
	j := &hostjob.Job{VMID: c.vmID, DeployID: fmt.Sprintf("one-%d", c.vmID), VMDir: dir, TmpDir: dir + "/tmp",
		BackupDir: stagingOf(c.vmID), Decision: dec, BID: inc, PID: inc - 1, FSFreeze: "NONE",
		SystemDS: 0, LVMDS: -1, SystemTM: "fs_lvm_ssh", Log: tlogger{t}}
	d := hostjob.Disk{Disk: one.Disk{ID: 0, Target: "vda", Type: "BLOCK", Format: "raw", TMMad: "fs_lvm_ssh", LVMThin: true}, Kind: matrix.LVMThin}
	if err := c.st.Inspect(context.Background(), dir, &d, false); err != nil {
		t.Fatal(err)
	}
	j.Disks = []hostjob.Disk{d}
	ctx := context.Background()
	if err := c.st.Cleanup(ctx, j, quietHV{}); err != nil {
		t.Fatal(err)
	}
	stageBackup(t, stagingOf(c.vmID), c.vmID, inc, []int{}, 0)
	if err := c.st.Backup(ctx, j, quietHV{}); err != nil {
		t.Fatal(err)
	}
	point, err := c.sim.Content(c.vg, fmt.Sprintf("%s_one_backup_%d", c.lv, inc))
	if err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(t.TempDir(), fmt.Sprintf("point.%d.raw", inc))
	if err := os.WriteFile(ref, point, 0o644); err != nil {
		t.Fatal(err)
	}
	c.points = append(c.points, ref)
	chownOneadmin(t, stagingOf(c.vmID))
	id := upload()
	j.Success = true
	if err := c.st.Finish(ctx, j, quietHV{}); err != nil {
		t.Fatal(err)
	}
	return id
}

type tlogger struct{ t *testing.T }

func (l tlogger) Infof(f string, a ...any) { l.t.Logf(f, a...) }
func (l tlogger) Warnf(f string, a ...any) { l.t.Logf("WARNING: "+f, a...) }

// The guest's life between the backups: data, a small write inside a block, a block rewritten
// with zeros, a discarded block, data written after a point.
func (c *lvmChain) run(t *testing.T, upload func() string) []inc {
	const blk = lvmsim.BlockSize
	c.write(t, 0, random(3<<20))
	c.write(t, 6<<20, random(blk))
	var incs []inc
	incs = append(incs, inc{0, c.backup(t, 0, upload)})

	c.write(t, 5<<20+100, random(512))   // partial block: the rest comes from the snapshot
	c.write(t, 1<<20, make([]byte, blk)) // zeroed
	if err := c.sim.Discard(c.vg, c.lv, 2<<20, 2*blk); err != nil {
		t.Fatal(err)
	}
	incs = append(incs, inc{1, c.backup(t, 1, upload)})

	c.write(t, 6<<20, make([]byte, 100)) // zeros over part of a block
	if err := c.sim.Discard(c.vg, c.lv, 0, blk); err != nil {
		t.Fatal(err)
	}
	c.write(t, 7<<20, random(3*blk))
	incs = append(incs, inc{2, c.backup(t, 2, upload)})
	c.write(t, 0, random(blk)) // after the last point: in no backup
	return incs
}

func chainOf(incs []inc, n int) string {
	var parts []string
	for _, it := range incs[:n+1] {
		parts = append(parts, fmt.Sprintf("%d:%s", it.id, it.snap))
	}
	return strings.Join(parts, ",")
}

func TestLVMDataPathRestic(t *testing.T) {
	const ds, vmID = 520, 740
	resetDS(t, ds)
	dsXML := resticDS(ds, nil)
	c := newLVMChain(t, vmID)
	incs := c.run(t, func() string { return h.resticBackup(t, dsXML, "hv1", vmID, "", "") })
	env := onedWithDatastores(t, map[int]string{ds: dsXML})
	for point := range incs {
		url := fmt.Sprintf("restic://%d//%s/var/lib/one/datastores/0/%d/backup/disk.0.%d", ds, chainOf(incs, point), vmID, point)
		sameDisk(t, h.download(t, "restic", url, env), c.points[point], url)
	}
}

func TestLVMDataPathRsync(t *testing.T) {
	const ds, vmID = 521, 741
	base := resetDS(t, ds)
	dsXML := rsyncDS(ds, nil)
	c := newLVMChain(t, vmID)
	incs := c.run(t, func() string {
		id, _ := h.rsyncBackup(t, dsXML, "hv1", vmID, "", "")
		return id
	})
	env := onedWithDatastores(t, map[int]string{ds: dsXML})
	for point := range incs {
		url := fmt.Sprintf("rsync://%d//%s%s/%d/%s/disk.0.%d", ds, chainOf(incs, point), base, vmID, incs[point].snap, point)
		sameDisk(t, h.download(t, "rsync", url, env), c.points[point], url)
	}
}
