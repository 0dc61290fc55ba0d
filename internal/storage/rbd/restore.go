package rbd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/rbd"

	"onebackup/internal/hostjob"
	"onebackup/internal/one"
	"onebackup/internal/storage"
)

// restored is an RBD disk's restored content: a new image next to the disk's (same pool,
// <image>.onebackup-restore.<random>), renamed over it by Swap.
type restored struct {
	ref     one.RBDImage
	newName string
	log     hostjob.Logger
}

func (r *restored) String() string { return r.ref.Name() }

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// PrepareRestore writes the restored content into a new RBD image through QEMU's rbd driver
// (which creates it with the pool's default features), leaving the disk's image untouched.
func (*RBD) PrepareRestore(ctx context.Context, t storage.RestoreTarget) (storage.Restored, error) {
	ref, err := t.Disk.RBD(t.VMID)
	if err != nil {
		return nil, err
	}
	r := &restored{ref: ref, newName: ref.Image + storage.RestoreTempSuffix + "." + randomSuffix(), log: t.Log}
	dst := ref
	dst.Image = r.newName
	if _, err := hostjob.Run(ctx, nil, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", t.Top, qemuFilename(dst, "")); err != nil {
		r.Discard()
		return nil, err
	}
	return r, nil
}

// Discard removes the new image (gone already is fine).
func (r *restored) Discard() {
	s := newSession()
	defer s.Close()
	if io, err := s.ioContext(r.ref); err == nil {
		rbd.RemoveImage(io, r.newName)
	}
}

// Swap renames the disk's image aside, the new one in its place, and removes the old one with
// its snapshots (the chain anchors and image snapshots of a state the disk no longer has). An
// old image that cannot be removed (a clone depends on it) is kept under its aside name, with a
// warning, rather than failing a restore that is already in place.
func (r *restored) Swap() error {
	s := newSession()
	defer s.Close()
	io, err := s.ioContext(r.ref)
	if err != nil {
		return err
	}
	old := r.ref.Image + storage.RestoreTempSuffix + ".old." + randomSuffix()
	if err := rbd.GetImage(io, r.ref.Image).Rename(old); err != nil {
		return fmt.Errorf("cannot rename %s aside: %w", r.ref.Name(), err)
	}
	if err := rbd.GetImage(io, r.newName).Rename(r.ref.Image); err != nil {
		if berr := rbd.GetImage(io, old).Rename(r.ref.Image); berr != nil {
			err = errors.Join(err, fmt.Errorf("the original image is now %s/%s: %w", r.ref.Pool, old, berr))
		}
		return fmt.Errorf("cannot rename the restored image to %s: %w", r.ref.Name(), err)
	}
	if err := removeImage(s, r.ref, old); err != nil {
		r.log.Warnf("%s is restored, but its previous content %s/%s could not be removed (remove it by hand): %v", r.ref.Name(), r.ref.Pool, old, err)
	}
	return nil
}

// removeImage removes an image with all its snapshots.
func removeImage(s *session, ref one.RBDImage, name string) error {
	aside := ref
	aside.Image = name
	im, err := s.open(aside, "")
	if err != nil {
		return err
	}
	snaps, err := im.GetSnapshotNames()
	if err == nil {
		for _, sn := range snaps {
			if err = removeSnap(im, sn.Name); err != nil {
				break
			}
		}
	}
	im.Close()
	if err != nil {
		return err
	}
	io, err := s.ioContext(ref)
	if err != nil {
		return err
	}
	return rbd.RemoveImage(io, name)
}
