package rbd

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"onebackup/internal/one"
)

// Snapshot names are OpenNebula's: existing chains and OpenNebula's own restore and cleanup find
// the anchors by these names, so they never change.
const (
	// tempSnap is the point in time of a live full backup in FULL mode; it lives for one run.
	tempSnap = "one_backup"
	// anchorPrefix + <increment id> is a chain anchor: the snapshot the next increment is
	// computed from. Protected, as OpenNebula creates them.
	anchorPrefix = "one_backup_"
)

var anchorRe = regexp.MustCompile(`^one_backup_([0-9]+)$`)

func anchor(n int) string { return anchorPrefix + strconv.Itoa(n) }

// anchorID is n for a snapshot named one_backup_<n>; ok is false for any other name (a user's
// snapshot, OpenNebula's image snapshots).
func anchorID(name string) (n int, ok bool) {
	m := anchorRe.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// session holds the cluster connections of one run: disks of one VM may name different users,
// configuration files or keys (CEPH_USER, CEPH_CONF, CEPH_KEY per disk), one connection each.
type session struct {
	conns map[string]*rados.Conn
	ioctx map[string]*rados.IOContext
}

func newSession() *session {
	return &session{conns: map[string]*rados.Conn{}, ioctx: map[string]*rados.IOContext{}}
}

func (s *session) Close() {
	for _, io := range s.ioctx {
		io.Destroy()
	}
	for _, c := range s.conns {
		c.Shutdown()
	}
}

// Bounds of every cluster call: a monitor or OSD that does not answer makes the backup fail
// with a message instead of hanging the TM action (seconds).
var clusterTimeouts = map[string]string{
	"client_mount_timeout": "30",
	"rados_mon_op_timeout": "60",
	"rados_osd_op_timeout": "300",
}

func (s *session) conn(img one.RBDImage) (*rados.Conn, error) {
	key := img.CephUser + "\x00" + img.CephConf + "\x00" + img.CephKey
	if c, ok := s.conns[key]; ok {
		return c, nil
	}
	var c *rados.Conn
	var err error
	if img.CephUser != "" {
		c, err = rados.NewConnWithUser(img.CephUser)
	} else {
		c, err = rados.NewConn()
	}
	if err != nil {
		return nil, fmt.Errorf("Ceph client for user %q: %w", img.CephUser, err)
	}
	if img.CephConf != "" {
		err = c.ReadConfigFile(img.CephConf)
	} else {
		err = c.ReadDefaultConfigFile()
	}
	if err != nil {
		c.Shutdown()
		return nil, fmt.Errorf("cannot read the Ceph configuration %s: %w", orDefault(img.CephConf, "(default)"), err)
	}
	if img.CephKey != "" {
		if err := c.SetConfigOption("keyfile", img.CephKey); err != nil {
			c.Shutdown()
			return nil, fmt.Errorf("Ceph key file %s: %w", img.CephKey, err)
		}
	}
	for k, v := range clusterTimeouts {
		c.SetConfigOption(k, v)
	}
	if err := c.Connect(); err != nil {
		c.Shutdown()
		return nil, fmt.Errorf("cannot connect to the Ceph cluster as %s (configuration %s): %w", orDefault(img.CephUser, "client.admin"), orDefault(img.CephConf, "default"), err)
	}
	s.conns[key] = c
	return c, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (s *session) ioContext(img one.RBDImage) (*rados.IOContext, error) {
	key := img.CephUser + "\x00" + img.CephConf + "\x00" + img.CephKey + "\x00" + img.Pool
	if io, ok := s.ioctx[key]; ok {
		return io, nil
	}
	c, err := s.conn(img)
	if err != nil {
		return nil, err
	}
	io, err := c.OpenIOContext(img.Pool)
	if err != nil {
		return nil, fmt.Errorf("Ceph pool %s: %w", img.Pool, err)
	}
	s.ioctx[key] = io
	return io, nil
}

// open opens an image at its head (snap "") or at one of its snapshots.
func (s *session) open(img one.RBDImage, snap string) (*rbd.Image, error) {
	io, err := s.ioContext(img)
	if err != nil {
		return nil, err
	}
	var im *rbd.Image
	if snap == "" {
		im, err = rbd.OpenImage(io, img.Image, rbd.NoSnapshot)
	} else {
		im, err = rbd.OpenImageReadOnly(io, img.Image, snap)
	}
	if err != nil {
		at := img.Name()
		if snap != "" {
			at += "@" + snap
		}
		return nil, fmt.Errorf("cannot open RBD image %s: %w", at, err)
	}
	return im, nil
}

// anchors lists the chain anchors of an image, lowest id first.
func anchors(im *rbd.Image) ([]int, error) {
	snaps, err := im.GetSnapshotNames()
	if err != nil {
		return nil, fmt.Errorf("listing the snapshots of %s: %w", im.GetName(), err)
	}
	var ids []int
	for _, s := range snaps {
		if n, ok := anchorID(s.Name); ok {
			ids = append(ids, n)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

func hasSnap(im *rbd.Image, name string) (bool, error) {
	snaps, err := im.GetSnapshotNames()
	if err != nil {
		return false, fmt.Errorf("listing the snapshots of %s: %w", im.GetName(), err)
	}
	for _, s := range snaps {
		if s.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// removeSnap removes a snapshot of ours, unprotecting it first; a snapshot that is already gone
// is fine, so every cleanup can run again after a crash.
func removeSnap(im *rbd.Image, name string) error {
	ok, err := hasSnap(im, name)
	if err != nil || !ok {
		return err
	}
	s := im.GetSnapshot(name)
	if prot, err := s.IsProtected(); err == nil && prot {
		if err := s.Unprotect(); err != nil && !errors.Is(err, rbd.ErrNotFound) {
			return fmt.Errorf("cannot unprotect %s@%s (a clone of it may exist): %w", im.GetName(), name, err)
		}
	}
	if err := s.Remove(); err != nil && !errors.Is(err, rbd.ErrNotFound) {
		return fmt.Errorf("cannot remove snapshot %s@%s: %w", im.GetName(), name, err)
	}
	return nil
}

// removeAnchors removes every chain anchor of an image except keep (-1: none kept). Snapshots
// with other names are never touched.
func removeAnchors(im *rbd.Image, keep int) error {
	ids, err := anchors(im)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range ids {
		if n != keep {
			errs = append(errs, removeSnap(im, anchor(n)))
		}
	}
	return errors.Join(errs...)
}

// createSnap creates a snapshot, protected when it anchors a chain (OpenNebula's restore and
// its own cleanup expect protected anchors).
func createSnap(im *rbd.Image, name string, protect bool) error {
	s, err := im.CreateSnapshot(name)
	if err != nil {
		return fmt.Errorf("cannot create snapshot %s@%s: %w", im.GetName(), name, err)
	}
	if protect {
		if err := s.Protect(); err != nil {
			return fmt.Errorf("cannot protect snapshot %s@%s: %w", im.GetName(), name, err)
		}
	}
	return nil
}
