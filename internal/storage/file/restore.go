package file

import (
	"context"
	"fmt"
	"onebackup/internal/qcow2"
	"os"
	"path/filepath"

	"onebackup/internal/hostjob"
	"onebackup/internal/storage"
)

// restored is a file disk's restored image, written next to the file the disk resolves to.
type restored struct {
	link     string // <VM dir>/disk.<id>
	target   string // the file the VM's disk resolves to, replaced
	tmp      string // the new image, next to target
	format   string // qcow2 or raw, the disk's own
	snapsDir string // <VM dir>/disk.<id>.snap when target lives in it ("" otherwise)
}

func (r *restored) String() string { return r.target }

// PrepareRestore converts the restored chain into a standalone image of the disk's own format
// (qcow2 or raw: a qcow2 in place of a raw disk would be read as raw data) next to the file the
// disk resolves to, so that the swap is a rename in one directory.
func (*File) PrepareRestore(ctx context.Context, t storage.RestoreTarget) (storage.Restored, error) {
	r := &restored{link: t.Disk.File(t.VMDir)}
	var err error
	if r.target, err = filepath.EvalSymlinks(r.link); err != nil {
		return nil, fmt.Errorf("the VM's disk %s cannot be found: %w", r.link, err)
	}
	if snaps := r.link + ".snap"; filepath.Dir(r.target) == snaps {
		r.snapsDir = snaps
	}
	info, err := qemuImgInfo(ctx, r.target)
	if err != nil {
		return nil, err
	}
	format := info.Format
	r.format = format
	if format != "qcow2" && format != "raw" {
		return nil, fmt.Errorf("%s is a %s image: only qcow2 and raw disks are restored in place", r.target, format)
	}
	r.tmp = filepath.Join(filepath.Dir(r.target), "."+filepath.Base(r.target)+storage.RestoreTempSuffix)
	if _, err := hostjob.Run(ctx, nil, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", format, t.Top, r.tmp); err != nil {
		os.Remove(r.tmp)
		return nil, err
	}
	return r, nil
}

func (r *restored) Discard() { os.Remove(r.tmp) }

// ContentDigest implements storage.ContentReader.
func (r *restored) ContentDigest(clusterSize int64) (qcow2.Digest, qcow2.Geometry, error) {
	if r.format == "raw" {
		return qcow2.RawDigest(r.tmp, clusterSize)
	}
	return qcow2.ImageDigest(r.tmp)
}

// Swap puts the restored image in place. A disk laid out as OpenNebula's qcow2 driver does
// (disk.<id> → disk.<id>.snap/<n>, snapshots as layers below) gets a fresh disk.<id>.snap holding
// only 0 (the restored image) and its self link, as after a new deployment: the old layers
// belong to a state the VM no longer has. Any other disk file is replaced by rename.
func (r *restored) Swap() error {
	if r.snapsDir == "" {
		return os.Rename(r.tmp, r.target)
	}
	fresh := r.snapsDir + storage.RestoreTempSuffix
	os.RemoveAll(fresh)
	if err := os.Mkdir(fresh, 0o755); err != nil {
		return err
	}
	if err := os.Rename(r.tmp, filepath.Join(fresh, "0")); err != nil {
		return err
	}
	if err := os.Symlink(".", filepath.Join(fresh, filepath.Base(r.snapsDir))); err != nil {
		return err
	}
	if err := storage.SwapDir(fresh, r.snapsDir); err != nil {
		return err
	}
	link := r.link + storage.RestoreTempSuffix
	os.Remove(link)
	if err := os.Symlink(filepath.Base(r.snapsDir)+"/0", link); err != nil {
		return err
	}
	return os.Rename(link, r.link)
}
