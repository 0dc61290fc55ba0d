package lvm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"onebackup/internal/hostjob"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage/lvm"
	"onebackup/internal/storage/lvm/lvmsim"
)

// The plans of the LVM side, command by command, on a simulated thin pool (device-mapper does
// not run on the machines these tests run on; see lvmsim). Every metadata command must run
// under the VG's lock, the VM must be quiesced only around the snapshot, and the volumes left
// afterwards must be exactly the ones the next backup needs.

const (
	vg     = "vg-one-0"
	lv     = "lv-one-7-0"
	pool   = "lv-one-7-pool"
	mib    = int64(1 << 20)
	lock   = "lock tm-onelvm-vg_one_0.lock"
	unlock = "unlock tm-onelvm-vg_one_0.lock"
	tpool  = "/dev/mapper/vg--one--0-lv--one--7--pool-tpool"
	tmeta  = "/dev/mapper/vg--one--0-lv--one--7--pool_tmeta"
)

// locked is a command run under the VG lock.
func locked(cmds ...string) []string { return append(append([]string{lock}, cmds...), unlock) }

func plan(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// recHV is the hypervisor side as the plan sees it: when the VM is checked and quiesced.
type recHV struct {
	name matrix.Hypervisor
	sim  *lvmsim.Sim
}

func (h recHV) Name() matrix.Hypervisor                           { return h.name }
func (h recHV) Recover(ctx context.Context, j *hostjob.Job) error { return nil }
func (h recHV) CheckStopped(ctx context.Context, j *hostjob.Job) error {
	h.sim.Note(fmt.Sprintf("%s: VM %d stopped", h.name, j.VMID))
	return nil
}
func (h recHV) Quiesce(ctx context.Context, j *hostjob.Job) (func() error, error) {
	h.sim.Note(fmt.Sprintf("%s: quiesce (FS_FREEZE=%s)", h.name, j.FSFreeze))
	return func() error { h.sim.Note(fmt.Sprintf("%s: resume", h.name)); return nil }, nil
}

type tlog struct{ t *testing.T }

func (l tlog) Infof(f string, a ...any) { l.t.Logf(f, a...) }
func (l tlog) Warnf(f string, a ...any) { l.t.Logf("WARNING: "+f, a...) }

// env is one VM (id 7, disk 0 on system datastore 0, fs_lvm_ssh) on a simulated host.
type env struct {
	t   *testing.T
	sim *lvmsim.Sim
	dir string
	st  *lvm.LVM
}

func newEnv(t *testing.T, thin bool) *env {
	e := &env{t: t, sim: lvmsim.New(t.TempDir()), dir: t.TempDir()}
	e.st = lvm.New(e.sim)
	if thin {
		e.sim.CreatePool(vg, pool, 16*mib)
		must(t, e.sim.CreateThin(vg, pool, lv, 16*mib))
	} else {
		must(t, e.sim.CreateThick(vg, lv, 16*mib))
	}
	must(t, e.sim.Write(vg, lv, 0, []byte("boot sector")))
	return e
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run describes one backup request.
type run struct {
	hv      matrix.Hypervisor
	thin    bool
	live    bool
	incr    bool
	li      int // LAST_INCREMENT_ID before this backup
	freeze  string
	success bool
}

func (e *env) job(r run) (*hostjob.Job, error) {
	kind := matrix.LVMThick
	if r.thin {
		kind = matrix.LVMThin
	}
	if r.hv == "" {
		r.hv = matrix.KVM
	}
	if r.freeze == "" {
		r.freeze = "NONE"
	}
	dec, err := matrix.Resolve(matrix.Request{Hypervisor: r.hv, Storage: kind, Incremental: r.incr, Live: r.live,
		FSFreeze: r.freeze, OptIns: []string{matrix.LVMThinIncrements}})
	if err != nil {
		return nil, err
	}
	j := &hostjob.Job{VMID: 7, DeployID: "one-7", VMDir: e.dir, TmpDir: filepath.Join(e.dir, "tmp"),
		BackupDir: filepath.Join(e.dir, "backup"), Decision: dec, BID: 0, PID: -1, FSFreeze: r.freeze,
		SystemDS: 0, LVMDS: -1, SystemTM: "fs_lvm_ssh", Success: r.success, Log: tlog{e.t}}
	if r.incr {
		j.BID, j.PID = r.li+1, r.li
	}
	d := hostjob.Disk{Disk: one.Disk{ID: 0, Target: "vda", Type: "BLOCK", Format: "raw", TMMad: "fs_lvm_ssh", LVMThin: r.thin, ImageID: 3, DatastoreID: 1}}
	must(e.t, e.st.Inspect(context.Background(), e.dir, &d, false))
	d.Kind = kind
	j.Disks = []hostjob.Disk{d}
	return j, nil
}

// prebackup is what onebackup-host backup does with the storage side: leftovers first, the
// backup, and on failure the same cleanup as a failed postbackup.
func (e *env) prebackup(r run) error {
	j, err := e.job(r)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if err := e.st.Cleanup(ctx, j, recHV{j.Decision.Row.Hypervisor, e.sim}); err != nil {
		return err
	}
	os.RemoveAll(j.BackupDir)
	must(e.t, os.MkdirAll(j.BackupDir, 0o755))
	err = e.st.Backup(ctx, j, recHV{j.Decision.Row.Hypervisor, e.sim})
	if err != nil {
		j.Success = false
		return errors.Join(err, e.st.Finish(ctx, j, recHV{j.Decision.Row.Hypervisor, e.sim}))
	}
	return nil
}

func (e *env) postbackup(r run) error {
	j, err := e.job(r)
	if err != nil {
		return err
	}
	return e.st.Finish(context.Background(), j, recHV{j.Decision.Row.Hypervisor, e.sim})
}

func (e *env) checkPlan(what string, want []string) {
	e.t.Helper()
	got := e.sim.Plan()
	if !slices.Equal(got, want) {
		e.t.Errorf("%s: plan\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func (e *env) checkVolumes(what string, want ...string) {
	e.t.Helper()
	want = append(want, lv)
	if slices.Contains(e.sim.Names(vg), pool) {
		want = append(want, pool)
	}
	slices.Sort(want)
	if got := e.sim.Names(vg); !slices.Equal(got, want) {
		e.t.Errorf("%s: volumes %v, want %v", what, got, want)
	}
	for _, n := range e.sim.Names(vg) {
		if n != lv && n != pool && e.sim.Active(vg, n) {
			e.t.Errorf("%s: %s left active", what, n)
		}
	}
	if e.sim.MetadataSnap(vg, pool) {
		e.t.Errorf("%s: the pool's metadata snapshot is left reserved", what)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "tmp")); err == nil && what != "before postbackup" {
		e.t.Errorf("%s: tmp dir left", what)
	}
}

func (e *env) checkFile(name string) {
	e.t.Helper()
	if _, err := os.Stat(filepath.Join(e.dir, "backup", name)); err != nil {
		e.t.Errorf("backup file %s missing: %v", name, err)
	}
}

func snap(n int) string { return fmt.Sprintf("%s_one_backup_%d", lv, n) }

func TestLVMPlanFullLiveThin(t *testing.T) {
	for _, hv := range []matrix.Hypervisor{matrix.KVM, matrix.LXC} {
		t.Run(string(hv), func(t *testing.T) {
			e := newEnv(t, true)
			r := run{hv: hv, thin: true, live: true, freeze: "SUSPEND", success: true}
			must(t, e.prebackup(r))
			tmp := lv + "_one_backup"
			e.checkPlan("prebackup", plan(
				locked(), // leftovers: none
				locked(), // old chain: none
				locked(string(hv)+": quiesce (FS_FREEZE=SUSPEND)", "lvcreate -s -n "+tmp+" "+vg+"/"+lv, string(hv)+": resume"),
				locked("lvchange -K -ay "+vg+"/"+tmp),
				locked("lvchange -K -an "+vg+"/"+tmp),
				locked("lvremove -y "+vg+"/"+tmp),
			))
			e.checkFile("disk.0.0")
			must(t, e.postbackup(r))
			e.checkPlan("postbackup", locked())
			e.checkVolumes("after the backup")
		})
	}
}

func TestLVMPlanFullPowerOff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		hv     matrix.Hypervisor
		thin   bool
		active bool
	}{{"kvm thin", matrix.KVM, true, false}, {"kvm thick", matrix.KVM, false, false}, {"kvm thick active", matrix.KVM, false, true}, {"lxc thin", matrix.LXC, true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.thin)
			if !tc.active {
				must(t, e.sim.Deactivate(vg, lv))
			}
			r := run{hv: tc.hv, thin: tc.thin, success: true}
			must(t, e.prebackup(r))
			read := plan(locked("lvchange -K -ay "+vg+"/"+lv), locked("lvchange -K -an "+vg+"/"+lv))
			if tc.active {
				read = nil // an active volume is read as it is and left active
			}
			e.checkPlan("prebackup", plan(locked(), []string{string(tc.hv) + ": VM 7 stopped"}, locked(), read))
			e.checkFile("disk.0.0")
			if e.sim.Active(vg, lv) != tc.active {
				t.Errorf("the volume's activation changed (W-8c)")
			}
			must(t, e.postbackup(r))
			e.checkPlan("postbackup", locked())
			e.checkVolumes("after the backup")
		})
	}
}

// Thick volumes have no snapshot to read a running VM from: the matrix refuses, and so does the
// LVM side when a datastore claims a thick volume is thin.
func TestLVMPlanThickLiveRefused(t *testing.T) {
	e := newEnv(t, false)
	err := e.prebackup(run{thin: false, live: true})
	if err == nil || !strings.Contains(err.Error(), "thick LVM supports power-off full backups only") {
		t.Fatalf("thick live: %v", err)
	}
	e.checkPlan("thick live", nil)
	err = e.prebackup(run{thin: true, live: true})
	if err == nil || !strings.Contains(err.Error(), "is not a thin volume") {
		t.Fatalf("thick volume declared thin: %v", err)
	}
	if p := e.sim.Plan(); slices.ContainsFunc(p, func(s string) bool { return strings.HasPrefix(s, "lvcreate") }) {
		t.Errorf("a snapshot was attempted: %v", p)
	}
	e.checkVolumes("after the refusals")
}

// A chain: the first increment removes the anchors of an older chain (W-8b) and grows the pool
// its anchor outgrows; the next one reads thin_delta through the pool's metadata snapshot;
// postbackup keeps exactly the anchor oned will hold.
func TestLVMPlanIncrements(t *testing.T) {
	e := newEnv(t, true)
	// An anchor of an earlier chain (e.g. left by OpenNebula's own driver before a reset).
	must(t, e.sim.Change(context.Background(), "lvcreate", "-s", "-n", snap(3), vg+"/"+lv))
	e.sim.Plan()

	r0 := run{thin: true, live: true, incr: true, li: -1, success: true}
	must(t, e.prebackup(r0))
	e.checkPlan("first increment", plan(
		locked(),
		locked("lvremove -y "+vg+"/"+snap(3)),
		locked("kvm: quiesce (FS_FREEZE=NONE)", "lvcreate -s -n "+snap(0)+" "+vg+"/"+lv, "kvm: resume"),
		locked("lvextend -L 33554432B "+vg+"/"+pool),
		locked("lvchange -K -ay "+vg+"/"+snap(0)),
		locked("lvchange -K -an "+vg+"/"+snap(0)),
	))
	e.checkFile("disk.0.0")
	must(t, e.postbackup(r0))
	e.checkPlan("first postbackup", locked())
	e.checkVolumes("after the first increment", snap(0))

	must(t, e.sim.Write(vg, lv, 5*mib, []byte("changed")))
	r1 := run{thin: true, live: true, incr: true, li: 0, success: true}
	must(t, e.prebackup(r1))
	e.checkPlan("second increment", plan(
		locked(),
		locked(),
		locked("kvm: quiesce (FS_FREEZE=NONE)", "lvcreate -s -n "+snap(1)+" "+vg+"/"+lv, "kvm: resume"),
		locked("lvextend -L 50331648B "+vg+"/"+pool),
		locked("lvchange -K -ay "+vg+"/"+snap(1)),
		locked("dmsetup message "+tpool+" 0 release_metadata_snap",
			"dmsetup message "+tpool+" 0 reserve_metadata_snap",
			"thin_delta --metadata-snap --thin1 3 --thin2 4 "+tmeta,
			"dmsetup message "+tpool+" 0 release_metadata_snap"),
		locked("lvchange -K -an "+vg+"/"+snap(1)),
	))
	e.checkFile("disk.0.1")
	// Until postbackup both anchors exist: the upload may still fail.
	e.checkVolumes("before postbackup", snap(0), snap(1))
	must(t, e.postbackup(r1))
	e.checkPlan("second postbackup", locked("lvremove -y "+vg+"/"+snap(0)))
	e.checkVolumes("after the second increment", snap(1))

	// Power-off increments take their anchor without quiescing anything.
	r2 := run{thin: true, incr: true, li: 1, success: true}
	must(t, e.prebackup(r2))
	p := e.sim.Plan()
	if !slices.Contains(p, "kvm: VM 7 stopped") || slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, "quiesce") }) ||
		!slices.Contains(p, "lvcreate -s -n "+snap(2)+" "+vg+"/"+lv) {
		t.Errorf("power-off increment plan: %v", p)
	}
	must(t, e.postbackup(r2))
	e.checkVolumes("after the power-off increment", snap(2))
}

// A failed upload: postbackup with BACKUP_RESULT=FAILURE drops the new anchor and keeps the one
// oned still holds (OpenNebula removed that one in prebackup, W-8c), so the retry of the same
// increment works.
func TestLVMPlanFailedUpload(t *testing.T) {
	e := newEnv(t, true)
	must(t, e.prebackup(run{thin: true, live: true, incr: true, li: -1}))
	must(t, e.postbackup(run{thin: true, live: true, incr: true, li: -1, success: true}))
	e.sim.Plan()

	r1 := run{thin: true, live: true, incr: true, li: 0}
	must(t, e.prebackup(r1))
	e.sim.Plan()
	must(t, e.postbackup(r1)) // success false: the upload failed
	e.checkPlan("failed postbackup", locked("lvremove -y "+vg+"/"+snap(1)))
	e.checkVolumes("after the failed upload", snap(0))

	r1.success = true
	must(t, e.prebackup(r1))
	e.checkFile("disk.0.1")
	must(t, e.postbackup(r1))
	e.checkVolumes("after the retry", snap(1))
}

// A run killed after it took its anchor, activated it and reserved the pool's metadata snapshot
// (what the kill leaves, made with the same commands), and a killed live full's temporary
// snapshot: the next run removes both, deactivates what the journal says was activated, and
// releases the stale metadata snapshot before reserving its own (W-8a, W-9d).
func TestLVMPlanKilledRun(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	must(t, e.prebackup(run{thin: true, live: true, incr: true, li: -1}))
	must(t, e.postbackup(run{thin: true, live: true, incr: true, li: -1, success: true}))
	for _, c := range [][]string{
		{"lvcreate", "-s", "-n", lv + "_one_backup", vg + "/" + lv},
		{"lvcreate", "-s", "-n", snap(1), vg + "/" + lv},
		{"lvchange", "-K", "-ay", vg + "/" + snap(1)},
		{"dmsetup", "message", tpool, "0", "reserve_metadata_snap"},
	} {
		must(t, e.sim.Change(ctx, c...))
	}
	must(t, hostjob.SaveJournal(filepath.Join(e.dir, "tmp"), hostjob.Journal{Activated: []string{vg + "/" + snap(1)}}))
	e.sim.Plan()

	r1 := run{thin: true, live: true, incr: true, li: 0, success: true}
	must(t, e.prebackup(r1))
	got := e.sim.Plan()
	want := plan(
		locked("lvchange -K -an "+vg+"/"+snap(1)),
		locked("lvremove -y "+vg+"/"+lv+"_one_backup", "lvremove -y "+vg+"/"+snap(1)),
	)
	if !slices.Equal(got[:len(want)], want) {
		t.Errorf("leftovers: plan\n  %s\nwant it to start with\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	e.checkFile("disk.0.1")
	must(t, e.postbackup(r1))
	e.checkVolumes("after the run following the kill", snap(1))
}

// The chain's anchor is gone (removed by hand, or oned's processing of the last backup failed
// after postbackup): the increment fails with the way out, and changes nothing.
func TestLVMPlanMissingAnchor(t *testing.T) {
	e := newEnv(t, true)
	err := e.prebackup(run{thin: true, live: true, incr: true, li: 4})
	if err == nil || !strings.Contains(err.Error(), "reset the backup chain") || !strings.Contains(err.Error(), snap(4)) {
		t.Fatalf("missing anchor: %v", err)
	}
	if p := e.sim.Plan(); slices.ContainsFunc(p, func(s string) bool { return strings.HasPrefix(s, "lvcreate") }) {
		t.Errorf("a snapshot was taken: %v", p)
	}
	e.checkVolumes("after the refusal")
}

// A disk that is not a block device (a volatile file disk) is refused, not skipped (W-17).
func TestLVMPlanFileDiskRefused(t *testing.T) {
	e := newEnv(t, true)
	j, err := e.job(run{thin: true, live: true})
	must(t, err)
	j.Disks[0].Type, j.Disks[0].DiskType = "FS", "FILE"
	err = e.st.Backup(context.Background(), j, recHV{matrix.KVM, e.sim})
	if err == nil || !strings.Contains(err.Error(), "disk 0 (TYPE FS, DISK_TYPE FILE) is not a block device") {
		t.Fatalf("volatile file disk: %v", err)
	}
	e.checkPlan("refusal", nil)
}

// Thin increments stay off unless the backup datastore enables them.
func TestLVMIncrementsOptIn(t *testing.T) {
	_, err := matrix.Resolve(matrix.Request{Hypervisor: matrix.KVM, Storage: matrix.LVMThin, Incremental: true, Live: true})
	if err == nil || !strings.Contains(err.Error(), matrix.LVMThinIncrements+"=YES") {
		t.Fatalf("thin increment without the opt-in: %v", err)
	}
}
