package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"onebackup/internal/hostjob"
	"onebackup/internal/storage"
)

// poweroffBackup works on the image files of a stopped VM.
func (f *File) poweroffBackup(ctx context.Context, j *hostjob.Job) error {
	for _, disk := range j.Disks {
		if err := f.poweroffDisk(ctx, j, disk); err != nil {
			return fmt.Errorf("disk %d: %w", disk.ID, err)
		}
	}
	return nil
}

func (f *File) poweroffDisk(ctx context.Context, j *hostjob.Job, disk hostjob.Disk) error {
	target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", disk.ID, j.BID))
	os.Remove(target)
	info, err := qemuImgInfo(ctx, disk.Path)
	if err != nil {
		return err
	}
	if j.DryRun {
		j.Log.Infof("dry run: disk %d (%s, %d bytes) -> %s", disk.ID, info.Format, info.VirtualSize, target)
		return nil
	}
	if !j.CBT() {
		hostjob.Hold(ctx, j.TmpDir, "export")
		return fullFromImage(ctx, disk.Path, info, target, false)
	}
	parent := ""
	if j.PID >= 0 {
		name := anchorName(j.VMID, j.PID)
		why := "bitmap " + name + " is missing"
		for _, b := range info.Specific.Data.Bitmaps {
			if b.Name == name {
				why = ""
				if b.inUse() {
					why = "bitmap " + name + " is in-use/inconsistent (QEMU stopped uncleanly)"
				}
			}
		}
		if why == "" {
			parent = name
		} else {
			j.Log.Warnf("CBT lost for VM %d disk %d (%s): taking a full backup inside the chain as increment %d", j.VMID, disk.ID, why, j.BID)
		}
	}
	if parent != "" {
		err = f.pullIncrement(ctx, j, disk, info, parent, target)
	} else {
		// A full inside the chain (PID >= 0) has every cluster explicit (zeros as zero
		// clusters), so that rebasing it onto the previous increment changes nothing.
		err = fullFromImage(ctx, disk.Path, info, target, j.PID >= 0)
	}
	if err != nil {
		return err
	}
	// Start tracking for the next increment. A retry drops its own stale BID bitmap first;
	// a full drops every older bitmap of this VM (it cannot serve anymore).
	for _, n := range ownBitmaps(info, j.VMID) {
		if n == j.BID || parent == "" {
			if _, err := hostjob.Run(ctx, nil, "qemu-img", "bitmap", "--remove", disk.Path, anchorName(j.VMID, n)); err != nil {
				return err
			}
		}
	}
	_, err = hostjob.Run(ctx, nil, "qemu-img", "bitmap", "--add", disk.Path, anchorName(j.VMID, j.BID))
	return err
}

// fullFromImage writes a full backup of an image file (its whole chain) through the sink.
func fullFromImage(ctx context.Context, path string, info *imageInfo, target string, explicit bool) error {
	ext, err := mapExtents(ctx, path, info.Format, explicit)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	return storage.WriteQcow2(ctx, storage.Source{Format: info.Format, Filename: abs, Size: info.VirtualSize, Extents: ext, Whole: true}, target)
}

// pullIncrement copies the clusters marked in bitmap parent into a new qcow2: qemu-nbd exports
// the image read-only with the bitmap as meta context, nbdinfo lists the dirty extents, and the
// sink reads them from the export.
func (f *File) pullIncrement(ctx context.Context, j *hostjob.Job, disk hostjob.Disk, info *imageInfo, parent, target string) error {
	sock := filepath.Join(j.TmpDir, fmt.Sprintf("nbd.%d.sock", disk.ID))
	os.Remove(sock)
	nbd := exec.Command("qemu-nbd", "-r", "-t", "-f", info.Format, "-B", parent, "-k", sock, disk.Path)
	var nbdErr strings.Builder
	nbd.Stderr = &nbdErr
	if err := nbd.Start(); err != nil {
		return fmt.Errorf("cannot start qemu-nbd: %w", err)
	}
	exited := make(chan struct{})
	go func() { nbd.Wait(); close(exited) }()
	jr := hostjob.LoadJournal(j.TmpDir)
	jr.NBDPid, jr.NBDStart, jr.NBDSock = nbd.Process.Pid, hostjob.ProcStart(nbd.Process.Pid), sock
	hostjob.SaveJournal(j.TmpDir, jr)
	stop := func() {
		nbd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			nbd.Process.Kill()
			<-exited
		}
		os.Remove(sock)
		jr := hostjob.LoadJournal(j.TmpDir)
		jr.NBDPid, jr.NBDStart, jr.NBDSock = 0, "", ""
		hostjob.SaveJournal(j.TmpDir, jr)
	}
	defer stop()
	if err := waitSocket(ctx, sock, exited); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(nbdErr.String()))
	}
	uri := "nbd+unix:///?socket=" + sock
	extents, err := dirtyExtents(ctx, uri, "qemu:dirty-bitmap:"+parent)
	if err != nil {
		return err
	}
	hostjob.Hold(ctx, j.TmpDir, "export")
	if err := storage.WriteQcow2(ctx, storage.Source{Format: "raw", Filename: uri, Size: info.VirtualSize, Extents: extents}, target); err != nil {
		return err
	}
	var total int64
	for _, e := range extents {
		total += e.Length
	}
	j.Log.Infof("disk %d: %d changed bytes in %d extents since %s", disk.ID, total, len(extents), parent)
	return nil
}

// poweroffAnchors applies keepAnchors to the bitmaps in the image files.
func (f *File) poweroffAnchors(ctx context.Context, j *hostjob.Job) error {
	keep := keepAnchors(j)
	var errs []error
	for _, disk := range j.Disks {
		if disk.Format != "qcow2" {
			continue
		}
		info, err := qemuImgInfo(ctx, disk.Path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, n := range ownBitmaps(info, j.VMID) {
			if !keep(n) {
				if _, err := hostjob.Run(ctx, nil, "qemu-img", "bitmap", "--remove", disk.Path, anchorName(j.VMID, n)); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
