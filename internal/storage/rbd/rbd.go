// Package rbd is the storage side of Ceph RBD disks (the ceph system datastore), for any
// hypervisor. It talks to the cluster through librbd (go-ceph) with each disk's own CEPH_USER,
// CEPH_CONF and CEPH_KEY; QEMU's rbd driver reads the data.
//
// The point in time is an RBD snapshot: a live full in FULL mode uses a temporary one_backup, an
// incremental chain keeps one protected anchor one_backup_<n> per image, the snapshot of the
// last increment oned accepted. A full is every allocated range of the snapshot (power-off FULL:
// of the image head), an increment exactly the ranges librbd's diff reports between the parent
// anchor and the new one, both written by the storage sink (storage.WriteQcow2); a chain that
// OpenNebula ≤ 7.0 started in rbd format goes on with rbd diff files. The hypervisor only
// quiesces the VM around the snapshots, so the same code serves KVM and LXC.
//
// Anchor policy: the anchor of a new increment is created in prebackup, the older one removed in
// postbackup only once the upload succeeded, so that a failed upload leaves the chain able to
// continue from the anchor oned still holds.
package rbd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ceph/go-ceph/rbd"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage"
)

func init() {
	storage.Register(matrix.SideRBD, func() storage.Storage { return &RBD{} })
}

// RBD implements storage.Storage for Ceph disks.
type RBD struct{}

// Side is the matrix's name of this side.
func (*RBD) Side() matrix.Side { return matrix.SideRBD }

// Inspect: an RBD disk has no file on the host and is always a raw image.
func (*RBD) Inspect(ctx context.Context, vmDir string, d *hostjob.Disk, dryRun bool) error {
	d.Format = "raw"
	return nil
}

// image is one selected disk opened at its head.
type image struct {
	disk *hostjob.Disk
	ref  one.RBDImage
	head *rbd.Image
}

func (im *image) Close() {
	if im.head != nil {
		im.head.Close()
	}
}

// openAll opens the head of every selected disk's image.
func openAll(s *session, j *hostjob.Job) ([]*image, error) {
	var out []*image
	for i := range j.Disks {
		d := &j.Disks[i]
		ref, err := d.RBD(j.VMID)
		if err != nil {
			closeAll(out)
			return nil, err
		}
		head, err := s.open(ref, "")
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("disk %d: %w", d.ID, err)
		}
		out = append(out, &image{disk: d, ref: ref, head: head})
	}
	return out, nil
}

func closeAll(ims []*image) {
	for _, im := range ims {
		im.Close()
	}
}

// pointSnap is the snapshot that fixes this run's point in time ("" for a power-off full,
// read from the image head).
func pointSnap(j *hostjob.Job) string {
	switch {
	case j.Decision.Incremental:
		return anchor(j.BID)
	case j.Decision.Live:
		return tempSnap
	}
	return ""
}

// Backup writes disk.<id>.<BID> (or, continuing a legacy chain, disk.<id>.<BID>.rbdiff) for
// every selected disk: the point, then the export, on this host.
func (r *RBD) Backup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	if err := r.Point(ctx, j, hv); err != nil {
		return err
	}
	return r.Export(ctx, j)
}

// Point checks the chain and creates this run's snapshot of every disk, all inside one quiesced
// window for a live backup (their snapshots are then of one instant, W-30); a power-off full
// needs none.
func (r *RBD) Point(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	if !j.Decision.Live {
		if err := hv.CheckStopped(ctx, j); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(j.TmpDir, 0o755); err != nil {
		return err
	}
	s := newSession()
	defer s.Close()
	ims, err := openAll(s, j)
	if err != nil {
		return err
	}
	defer closeAll(ims)

	// Everything that is not the snapshot itself happens before the VM is quiesced (W-29).
	for _, im := range ims {
		switch {
		case !j.Decision.Incremental || j.PID < 0:
			// FULL mode keeps no chain; a chain start drops the anchors of the old chain.
			if err := removeAnchors(im.head, -1); err != nil {
				return err
			}
		default:
			ok, err := hasSnap(im.head, anchor(j.PID))
			if err != nil {
				return err
			}
			if !ok {
				// oned still expects the chain to continue from PID (e.g. its processing of
				// the last backup failed after postbackup, W-11): say so instead of
				// writing an increment against the wrong base.
				return fmt.Errorf("disk %d: the anchor snapshot %s@%s of the backup chain is gone, so increment %d cannot be computed; reset the backup chain (onevm backup --reset) to start with a full backup",
					im.disk.ID, im.ref.Name(), anchor(j.PID), j.BID)
			}
		}
	}
	snap := pointSnap(j)
	if snap == "" {
		return nil
	}
	take := func() error {
		for _, im := range ims {
			if err := createSnap(im.head, snap, j.Decision.Incremental); err != nil {
				return err
			}
		}
		return nil
	}
	if j.Decision.Live {
		return hypervisor.AtQuiescedPoint(ctx, hv, j, take)
	}
	return take()
}

// Export writes every disk's file from the point Point fixed.
func (r *RBD) Export(ctx context.Context, j *hostjob.Job) error {
	if err := os.MkdirAll(j.TmpDir, 0o755); err != nil {
		return err
	}
	hostjob.Hold(ctx, j.TmpDir, "export")
	s := newSession()
	defer s.Close()
	for i := range j.Disks {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := &j.Disks[i]
		ref, err := d.RBD(j.VMID)
		if err != nil {
			return err
		}
		if err := r.export(ctx, s, j, d, ref); err != nil {
			return fmt.Errorf("disk %d (%s): %w", d.ID, ref.Name(), err)
		}
	}
	return nil
}

// export writes one disk's backup file.
func (r *RBD) export(ctx context.Context, s *session, j *hostjob.Job, d *hostjob.Disk, ref one.RBDImage) error {
	snap := pointSnap(j)
	target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", d.ID, j.BID))
	at, err := s.open(ref, snap)
	if err != nil {
		return err
	}
	defer at.Close()
	size, err := at.GetSize()
	if err != nil {
		return err
	}
	if j.Full() {
		// Allocated data only: QEMU's rbd driver reports the image's allocation map, and
		// qemu-img copies only those ranges.
		src := storage.Source{Format: "raw", Filename: qemuFilename(ref, snap), Size: int64(size), Whole: true}
		what := ref.Name()
		if snap != "" {
			what += "@" + snap
		}
		j.Log.Infof("VM %d disk %d: full backup of %s", j.VMID, d.ID, what)
		return storage.WriteQcow2(ctx, src, target)
	}
	from := anchor(j.PID)
	if j.ChainFormat == "rbd" {
		j.Log.Infof("VM %d disk %d: increment %d of a chain in rbd format: %s", j.VMID, d.ID, j.BID, filepath.Base(target)+".rbdiff")
		return writeRBDiff(ctx, at, from, snap, target+".rbdiff")
	}
	ext, err := changes(at, from, size)
	if err != nil {
		return err
	}
	j.Log.Infof("VM %d disk %d: increment %d holds %d changed extents since %s", j.VMID, d.ID, j.BID, len(ext), from)
	src := storage.Source{Format: "raw", Filename: qemuFilename(ref, snap), Size: int64(size), Extents: ext}
	return storage.WriteQcow2(ctx, src, target)
}

// Cleanup removes what a killed or failed run of this VM may have left: a freeze, a temporary
// one_backup snapshot, the anchor of the increment about to be taken (the same BID after a
// failed upload), the tmp dir. Other anchors and every snapshot with another name stay.
func (r *RBD) Cleanup(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	return tidy(ctx, j, hv, func(im *image) error {
		if j.Decision.Incremental {
			return errors.Join(removeSnap(im.head, tempSnap), removeSnap(im.head, anchor(j.BID)))
		}
		return removeSnap(im.head, tempSnap)
	})
}

// Finish applies the anchor policy in postbackup: exactly one anchor stays, the one oned will
// hold — BID after a successful upload, PID after a failure (none when a chain start failed).
// FULL mode keeps none.
func (r *RBD) Finish(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor) error {
	hostjob.Hold(ctx, j.TmpDir, "postbackup")
	// Cancelling postbackup must not leave the VM frozen or half cleaned: finish regardless.
	ctx = context.WithoutCancel(ctx)
	keep := j.KeptAnchor()
	return tidy(ctx, j, hv, func(im *image) error {
		return errors.Join(removeSnap(im.head, tempSnap), removeAnchors(im.head, keep))
	})
}

// tidy undoes what the hypervisor side left on the VM, applies snaps to every disk's image,
// and removes the tmp dir once all of it succeeded.
func tidy(ctx context.Context, j *hostjob.Job, hv hypervisor.Hypervisor, snaps func(*image) error) error {
	var errs []error
	if err := hv.Recover(ctx, j); err != nil {
		errs = append(errs, err)
	}
	s := newSession()
	defer s.Close()
	ims, err := openAll(s, j)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer closeAll(ims)
	for _, im := range ims {
		errs = append(errs, snaps(im))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return removeTmp(j)
}

// removeTmp deletes <VM dir>/tmp (journal, hold files): a Ceph VM keeps no layer there.
func removeTmp(j *hostjob.Job) error {
	if err := j.CheckTmpDir(); err != nil {
		return err
	}
	return os.RemoveAll(j.TmpDir)
}
