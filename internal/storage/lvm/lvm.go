// Package lvm is the storage side of disks on logical volumes (the fs_lvm_ssh system datastore,
// thick or thin, and the thin-only lvm driver), for any hypervisor.
//
// The point in time of a live backup is a thin snapshot: a temporary <lv>_one_backup for a full,
// or, in an incremental chain, an anchor <lv>_one_backup_<n> per increment (the names
// OpenNebula's drivers use, so that their scripts and ours recognise each other's snapshots). A
// power-off full reads the volume itself. An increment is exactly the blocks thin_delta reports
// between the chain's last anchor and the new one, read from the new snapshot and written by the
// storage sink (storage.WriteQcow2); blocks discarded since the anchor are stored as zeros.
//
// Anchor policy (as for Ceph): the new anchor is created in prebackup; the older one is removed
// in postbackup, and only once the upload succeeded, so that a failed upload leaves the chain
// able to continue from the anchor oned still holds. Every metadata command runs under the
// volume group's lock file that OpenNebula's own LVM scripts take, and a volume this run
// activated is deactivated again, also after a crash (the journal records it first).
package lvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage"
)

func init() {
	storage.Register(matrix.SideLVM, func() storage.Storage { return New(&System{LockDir: "/var/lock/one"}) })
}

// LVM implements storage.Storage for disks on logical volumes.
type LVM struct{ host Host }

// New is the LVM side working through h.
func New(h Host) *LVM { return &LVM{host: h} }

// Side is the matrix's name of this side.
func (*LVM) Side() matrix.Side { return matrix.SideLVM }

// Inspect: an LVM disk is a raw block device, linked from <VM dir>/disk.<id>.
func (*LVM) Inspect(ctx context.Context, vmDir string, d *hostjob.Disk, dryRun bool) error {
	d.Format = "raw"
	d.Path = d.File(vmDir)
	return nil
}

// Snapshot names (spec §6.2).
func tempSnap(lv string) string      { return lv + "_one_backup" }
func anchor(lv string, n int) string { return lv + "_one_backup_" + strconv.Itoa(n) }
func anchorID(lv, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, lv+"_one_backup_")
	if !ok || rest == "" || strings.TrimLeft(rest, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil
}

// disk is a selected disk with its volume as named by OpenNebula and as lvs reports it.
type disk struct {
	*hostjob.Disk
	want one.LVMVolume
	lv   Volume
}

func (d disk) name(lv string) string { return d.want.VG + "/" + lv }

// report lists the volumes of every VG of the job, once per VG.
type report map[string][]Volume

func (l *LVM) report(ctx context.Context, vgs []string) (report, error) {
	r := report{}
	for _, vg := range vgs {
		vols, err := l.host.Report(ctx, vg)
		if err != nil {
			return nil, err
		}
		r[vg] = vols
	}
	return r, nil
}

// disks finds every selected disk's volume.
func (l *LVM) disks(ctx context.Context, j *hostjob.Job) ([]disk, report, error) {
	var out []disk
	for i := range j.Disks {
		d := &j.Disks[i]
		if d.Type != "BLOCK" && !(d.Volatile() && d.DiskType == "BLOCK") {
			// OpenNebula's LVM drivers skip such disks and report success (W-17).
			return nil, nil, fmt.Errorf("disk %d (TYPE %s, DISK_TYPE %s) is not a block device on this LVM datastore, so it cannot be backed up with the VM's logical volumes", d.ID, d.Type, d.DiskType)
		}
		v, err := d.LVM(j.VMID, j.SystemTM, j.SystemDS, j.LVMDS)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, disk{Disk: d, want: v})
	}
	r, err := l.report(ctx, vgsOf(out))
	if err != nil {
		return nil, nil, err
	}
	for i := range out {
		d := &out[i]
		v, ok := find(r[d.want.VG], d.want.LV)
		if !ok {
			return nil, nil, fmt.Errorf("disk %d: logical volume %s does not exist on this host", d.ID, d.want.Name())
		}
		d.lv = v
	}
	return out, r, nil
}

func vgsOf(ds []disk) []string {
	var vgs []string
	for _, d := range ds {
		if !slices.Contains(vgs, d.want.VG) {
			vgs = append(vgs, d.want.VG)
		}
	}
	slices.Sort(vgs)
	return vgs
}

// locked runs f holding the metadata locks of vgs (taken in name order, so that two runs never
// wait for each other).
func (l *LVM) locked(ctx context.Context, vgs []string, f func() error) error {
	for _, vg := range vgs {
		unlock, err := l.host.Lock(ctx, vg)
		if err != nil {
			return err
		}
		defer unlock()
	}
	return f()
}

// pointName is the snapshot that fixes this run's point in time ("" for a power-off full,
// which reads the volume itself).
func pointName(j *hostjob.Job, lv string) string {
	switch {
	case j.Decision.Incremental:
		return anchor(lv, j.BID)
	case j.Decision.Live:
		return tempSnap(lv)
	}
	return ""
}

// Backup writes disk.<id>.<BID> for every selected disk.
func (l *LVM) Backup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	if !j.Decision.Live {
		if err := hv.CheckStopped(ctx, j); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(j.TmpDir, 0o755); err != nil {
		return err
	}
	ds, _, err := l.disks(ctx, j)
	if err != nil {
		return err
	}
	vgs := vgsOf(ds)
	for _, d := range ds {
		if (j.Decision.Live || j.Decision.Incremental) && !d.lv.Thin() {
			// The matrix refuses these for thick LVs; a volume that is not what the
			// datastore says (LVM_THIN_ENABLE on a thick LV) is refused here.
			return fmt.Errorf("disk %d: %s is not a thin volume, so it has no snapshot to back up from while the VM runs or to track changes with", d.ID, d.want.Name())
		}
	}

	// Everything that is not the snapshot itself happens before the VM is quiesced (W-29).
	err = l.locked(ctx, vgs, func() error {
		for _, d := range ds {
			if err := l.prepareChain(ctx, j, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if j.Decision.Incremental || j.Decision.Live {
		if err := l.fixPoint(ctx, j, hv, ds, vgs); err != nil {
			return err
		}
	}
	for _, d := range ds {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := l.export(ctx, j, d); err != nil {
			return fmt.Errorf("disk %d (%s): %w", d.ID, d.want.Name(), err)
		}
	}
	return nil
}

// prepareChain checks the chain's anchor of one disk (an increment) or drops the anchors of an
// old chain (a full keeps no chain; a chain start begins a new one, W-8b).
func (l *LVM) prepareChain(ctx context.Context, j *hostjob.Job, d disk) error {
	vols, err := l.host.Report(ctx, d.want.VG)
	if err != nil {
		return err
	}
	if j.Decision.Incremental && j.PID >= 0 {
		if _, ok := find(vols, anchor(d.want.LV, j.PID)); !ok {
			// oned still expects the chain to continue from PID (e.g. its processing of the
			// last backup failed after postbackup, W-11): say so instead of writing an
			// increment against the wrong base.
			return fmt.Errorf("disk %d: the anchor snapshot %s of the backup chain is gone, so increment %d cannot be computed; reset the backup chain (onevm backup --reset) to start with a full backup",
				d.ID, d.name(anchor(d.want.LV, j.PID)), j.BID)
		}
		return nil
	}
	return l.removeAnchors(ctx, d, vols, -1)
}

// fixPoint creates this run's snapshot of every disk, all inside one quiesced window for a live
// backup (their snapshots are then of one instant, W-30), with the metadata locks taken before
// the VM is quiesced; then grows the thin pools the new anchors may outgrow.
func (l *LVM) fixPoint(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor, ds []disk, vgs []string) error {
	err := l.locked(ctx, vgs, func() error {
		take := func() error {
			for _, d := range ds {
				if err := l.host.Change(ctx, "lvcreate", "-s", "-n", pointName(j, d.want.LV), d.want.Name()); err != nil {
					return fmt.Errorf("disk %d: cannot snapshot %s: %w", d.ID, d.want.Name(), err)
				}
			}
			return nil
		}
		if j.Decision.Live {
			return hypervisor.AtQuiescedPoint(ctx, hv, j, take)
		}
		return take()
	})
	if err != nil || !j.Decision.Incremental {
		return err
	}
	return l.locked(ctx, vgs, func() error { return l.adjustPools(ctx, j, ds) })
}

// adjustPools grows a thin pool to the sum of its volumes' sizes when the anchors made it larger
// than the pool (what OpenNebula's driver does, so that keeping an anchor per disk cannot fill a
// pool sized for the disks alone). A pool that cannot grow is reported, not fatal: the VG may
// have no free space, and the pool may well have room still.
func (l *LVM) adjustPools(ctx context.Context, j *hostjob.Job, ds []disk) error {
	done := map[string]bool{}
	for _, d := range ds {
		key := d.want.VG + "/" + d.lv.Pool
		if d.lv.Pool == "" || done[key] {
			continue
		}
		done[key] = true
		vols, err := l.host.Report(ctx, d.want.VG)
		if err != nil {
			return err
		}
		pool, ok := find(vols, d.lv.Pool)
		if !ok {
			return fmt.Errorf("disk %d: thin pool %s of %s not found", d.ID, key, d.want.Name())
		}
		var sum int64
		for _, v := range vols {
			if v.Pool == d.lv.Pool {
				sum += v.Size
			}
		}
		if sum > pool.Size {
			if err := l.host.Change(ctx, "lvextend", "-L", strconv.FormatInt(sum, 10)+"B", key); err != nil {
				j.Log.Warnf("VM %d: thin pool %s holds volumes of %d bytes in %d; it could not grow: %v", j.VMID, key, sum, pool.Size, err)
			}
		}
	}
	return nil
}

// export writes one disk's backup file from its point in time.
func (l *LVM) export(ctx context.Context, j *hostjob.Job, d disk) (err error) {
	target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", d.ID, j.BID))
	src := pointName(j, d.want.LV)
	if src == "" {
		src = d.want.LV
	}
	vols, err := l.host.Report(ctx, d.want.VG)
	if err != nil {
		return err
	}
	v, ok := find(vols, src)
	if !ok {
		return fmt.Errorf("%s does not exist", d.name(src))
	}
	if src == tempSnap(d.want.LV) {
		// The temporary snapshot of a live full is no use once read (removed after its
		// deactivation below, deferred calls running last first).
		defer func() {
			rm := func() error { return l.host.Change(context.WithoutCancel(ctx), "lvremove", "-y", d.name(src)) }
			err = errors.Join(err, l.locked(context.WithoutCancel(ctx), []string{d.want.VG}, rm))
		}()
	}
	if !v.Active {
		if err := l.activate(ctx, j, d.want.VG, src); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, l.deactivate(context.WithoutCancel(ctx), j, d.want.VG, src)) }()
	}
	dev := l.host.Device(d.want.VG, src, "")
	if j.Full() {
		j.Log.Infof("VM %d disk %d: full backup of %s", j.VMID, d.ID, d.name(src))
		return storage.WriteQcow2(ctx, storage.Source{Format: "raw", Filename: dev, Size: v.Size, Whole: true}, target)
	}
	from, ok := find(vols, anchor(d.want.LV, j.PID))
	if !ok || from.ThinID < 0 || v.ThinID < 0 || from.Pool != v.Pool {
		return fmt.Errorf("anchor %s is not a thin snapshot in the pool of %s", d.name(anchor(d.want.LV, j.PID)), d.name(src))
	}
	ext, err := l.delta(ctx, d.want.VG, v.Pool, from.ThinID, v.ThinID, v.Size)
	if err != nil {
		return err
	}
	j.Log.Infof("VM %d disk %d: increment %d holds %d changed extents since %s", j.VMID, d.ID, j.BID, len(ext), from.Name)
	return storage.WriteQcow2(ctx, storage.Source{Format: "raw", Filename: dev, Size: v.Size, Extents: ext}, target)
}

// delta asks the pool which blocks differ between two of its thin devices. thin_delta reads the
// pool's metadata while the pool is in use only through a metadata snapshot, which a pool has
// at most one of: a stale one of a killed run is released first (W-9d), this run's always after,
// and the VG lock is held throughout so that no other run of ours reserves it meanwhile.
func (l *LVM) delta(ctx context.Context, vg, pool string, from, to int, size int64) ([]storage.Extent, error) {
	tpool := l.host.Device(vg, pool, "tpool")
	tmeta := l.host.Device(vg, pool, "tmeta")
	var ext []storage.Extent
	err := l.locked(ctx, []string{vg}, func() (err error) {
		l.host.Change(ctx, "dmsetup", "message", tpool, "0", "release_metadata_snap")
		if err := l.host.Change(ctx, "dmsetup", "message", tpool, "0", "reserve_metadata_snap"); err != nil {
			return fmt.Errorf("cannot reserve the metadata snapshot of pool %s/%s: %w", vg, pool, err)
		}
		defer func() {
			if rerr := l.host.Change(context.WithoutCancel(ctx), "dmsetup", "message", tpool, "0", "release_metadata_snap"); rerr != nil {
				err = errors.Join(err, fmt.Errorf("cannot release the metadata snapshot of pool %s/%s: %w", vg, pool, rerr))
			}
		}()
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			var perr error
			ext, perr = parseDelta(pr, size)
			pr.CloseWithError(perr)
			io.Copy(io.Discard, pr)
			done <- perr
		}()
		derr := l.host.Delta(ctx, tmeta, from, to, pw)
		pw.CloseWithError(derr)
		perr := <-done
		if derr != nil {
			return derr
		}
		return perr
	})
	return ext, err
}

// activate makes a volume's device appear, journaled first so that a killed run's volume is
// deactivated by the next one. -K: thin snapshots are created with activation skipped.
func (l *LVM) activate(ctx context.Context, j *hostjob.Job, vg, lv string) error {
	jr := hostjob.LoadJournal(j.TmpDir)
	if !slices.Contains(jr.Activated, vg+"/"+lv) {
		jr.Activated = append(jr.Activated, vg+"/"+lv)
		if err := hostjob.SaveJournal(j.TmpDir, jr); err != nil {
			return err
		}
	}
	return l.locked(ctx, []string{vg}, func() error { return l.host.Change(ctx, "lvchange", "-K", "-ay", vg+"/"+lv) })
}

// deactivate puts a volume this run activated back to inactive (W-8c).
func (l *LVM) deactivate(ctx context.Context, j *hostjob.Job, vg, lv string) error {
	err := l.locked(ctx, []string{vg}, func() error { return l.host.Change(ctx, "lvchange", "-K", "-an", vg+"/"+lv) })
	if err != nil {
		return err
	}
	return forget(j, vg+"/"+lv)
}

// forget drops a volume from the journal's activated list.
func forget(j *hostjob.Job, name string) error {
	jr := hostjob.LoadJournal(j.TmpDir)
	if !slices.Contains(jr.Activated, name) {
		return nil
	}
	jr.Activated = slices.DeleteFunc(jr.Activated, func(s string) bool { return s == name })
	return hostjob.SaveJournal(j.TmpDir, jr)
}

// removeAnchors removes every anchor of d's volume but keep (-1: all), and the temporary
// snapshot of a live full.
func (l *LVM) removeAnchors(ctx context.Context, d disk, vols []Volume, keep int) error {
	var errs []error
	for _, v := range vols {
		n, isAnchor := anchorID(d.want.LV, v.Name)
		if v.Name == tempSnap(d.want.LV) || isAnchor && n != keep {
			if v.Origin != "" && v.Origin != d.want.LV {
				continue // a name that only looks like ours
			}
			errs = append(errs, l.host.Change(ctx, "lvremove", "-y", d.name(v.Name)))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes what a killed or failed run of this VM may have left: a freeze, volumes it
// activated, a temporary snapshot, the anchor of the increment about to be taken (the same BID
// after a failed upload). Other anchors and every other volume stay.
func (l *LVM) Cleanup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	return l.tidy(ctx, j, hv, func(d disk, vols []Volume) error {
		var errs []error
		for _, name := range []string{tempSnap(d.want.LV), anchor(d.want.LV, j.BID)} {
			if name == anchor(d.want.LV, j.BID) && !j.Decision.Incremental {
				continue
			}
			if v, ok := find(vols, name); ok && (v.Origin == "" || v.Origin == d.want.LV) {
				errs = append(errs, l.host.Change(ctx, "lvremove", "-y", d.name(name)))
			}
		}
		return errors.Join(errs...)
	})
}

// Finish applies the anchor policy in postbackup: exactly one anchor stays, the one oned will
// hold — BID after a successful upload, PID after a failure (none when a chain start failed);
// FULL mode keeps none (W-8c).
func (l *LVM) Finish(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	hostjob.Hold(ctx, j.TmpDir, "postbackup")
	ctx = context.WithoutCancel(ctx)
	keep := j.KeptAnchor()
	return l.tidy(ctx, j, hv, func(d disk, vols []Volume) error { return l.removeAnchors(ctx, d, vols, keep) })
}

// tidy undoes what the hypervisor side and an earlier run left (freeze, activated volumes),
// applies snaps to every disk under the VG locks, and removes the tmp dir once all of it
// succeeded.
func (l *LVM) tidy(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor, snaps func(disk, []Volume) error) error {
	var errs []error
	if err := hv.Recover(ctx, j); err != nil {
		errs = append(errs, err)
	}
	ds, r, err := l.disks(ctx, j)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, name := range hostjob.LoadJournal(j.TmpDir).Activated {
		vg, lv, _ := strings.Cut(name, "/")
		if _, ok := find(r[vg], lv); !ok {
			errs = append(errs, forget(j, name)) // removed since (a temporary snapshot)
			continue
		}
		errs = append(errs, l.deactivate(ctx, j, vg, lv))
	}
	errs = append(errs, l.locked(ctx, vgsOf(ds), func() error {
		var errs []error
		for _, d := range ds {
			vols, err := l.host.Report(ctx, d.want.VG)
			if err != nil {
				return err
			}
			errs = append(errs, snaps(d, vols))
		}
		return errors.Join(errs...)
	}))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := j.CheckTmpDir(); err != nil {
		return err
	}
	return os.RemoveAll(j.TmpDir)
}
