package kvmfile

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

	"onebackup/internal/storage"
)

// poweroffBackup works on the image files of a stopped VM.
func (a *Adapter) poweroffBackup(ctx context.Context, j *storage.Job) error {
	for _, disk := range j.Disks {
		if err := a.poweroffDisk(ctx, j, disk); err != nil {
			return fmt.Errorf("disk %d: %w", disk.ID, err)
		}
	}
	return nil
}

func (a *Adapter) poweroffDisk(ctx context.Context, j *storage.Job, disk storage.Disk) error {
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
	if !cbt(j) {
		hold(ctx, j.TmpDir, "export")
		return convertFull(ctx, disk.Path, info.Format, target)
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
	switch {
	case parent != "":
		if err := a.pullIncrement(ctx, j, disk, info, parent, target); err != nil {
			return err
		}
	case j.PID >= 0:
		// A full inside the chain: every cluster explicit (zeros as zero clusters), so that
		// rebasing it onto the previous increment changes nothing.
		if err := convertExplicit(ctx, j, disk, info, target); err != nil {
			return err
		}
	default:
		if err := convertFull(ctx, disk.Path, info.Format, target); err != nil {
			return err
		}
	}
	// Start tracking for the next increment. A retry drops its own stale BID bitmap first;
	// a full drops every older bitmap of this VM (it cannot serve anymore).
	for _, n := range ownBitmaps(info, j.VMID) {
		if n == j.BID || parent == "" {
			if _, err := run(ctx, nil, "qemu-img", "bitmap", "--remove", disk.Path, anchorName(j.VMID, n)); err != nil {
				return err
			}
		}
	}
	_, err = run(ctx, nil, "qemu-img", "bitmap", "--add", disk.Path, anchorName(j.VMID, j.BID))
	return err
}

func convertFull(ctx context.Context, src, format, target string) error {
	_, err := run(ctx, nil, "qemu-img", "convert", "-q", "-m", "4", "-U", "-f", format, "-O", "qcow2", src, target)
	return err
}

func convertExplicit(ctx context.Context, j *storage.Job, disk storage.Disk, info *imageInfo, target string) error {
	zero := filepath.Join(j.TmpDir, fmt.Sprintf("zero.%d.qcow2", disk.ID))
	defer os.Remove(zero)
	size := fmt.Sprint(info.VirtualSize)
	if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", zero, size); err != nil {
		return err
	}
	if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", zero, target, size); err != nil {
		return err
	}
	if _, err := run(ctx, nil, "qemu-img", "convert", "-q", "-n", "-m", "4", "-U", "-f", info.Format, "-O", "qcow2", disk.Path, target); err != nil {
		return err
	}
	_, err := run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-b", "", target)
	return err
}

// pullIncrement copies the clusters marked in bitmap parent into a new qcow2: qemu-nbd exports
// the image read-only with the bitmap as meta context, nbdinfo lists the dirty extents, and
// qemu-io reads them through a copy-on-read target whose backing is the export.
func (a *Adapter) pullIncrement(ctx context.Context, j *storage.Job, disk storage.Disk, info *imageInfo, parent, target string) error {
	sock := filepath.Join(j.TmpDir, fmt.Sprintf("nbd.%d.sock", disk.ID))
	os.Remove(sock)
	nbd := exec.Command("qemu-nbd", "-r", "-t", "-f", info.Format, "-B", parent, "-k", sock, disk.Path)
	var nbdErr strings.Builder
	nbd.Stderr = &nbdErr
	if err := nbd.Start(); err != nil {
		return fmt.Errorf("cannot start qemu-nbd: %v", err)
	}
	exited := make(chan struct{})
	go func() { nbd.Wait(); close(exited) }()
	jr := loadJournal(j.TmpDir)
	jr.NBDPid, jr.NBDStart, jr.NBDSock = nbd.Process.Pid, procStart(nbd.Process.Pid), sock
	saveJournal(j.TmpDir, jr)
	stop := func() {
		nbd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			nbd.Process.Kill()
			<-exited
		}
		os.Remove(sock)
		jr := loadJournal(j.TmpDir)
		jr.NBDPid, jr.NBDStart, jr.NBDSock = 0, "", ""
		saveJournal(j.TmpDir, jr)
	}
	defer stop()
	if err := waitSocket(ctx, sock, exited); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(nbdErr.String()))
	}
	uri := "nbd+unix:///?socket=" + sock
	extents, err := dirtyExtents(ctx, uri, "qemu:dirty-bitmap:"+parent)
	if err != nil {
		return err
	}
	if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", uri, target, fmt.Sprint(info.VirtualSize)); err != nil {
		return err
	}
	hold(ctx, j.TmpDir, "export")
	var script strings.Builder
	fmt.Fprintf(&script, "open -C -o driver=qcow2 %s\n", target)
	var total int64
	for _, e := range extents {
		for off := e.Offset; off < e.Offset+e.Length; off += 1 << 30 {
			n := min(int64(1<<30), e.Offset+e.Length-off)
			fmt.Fprintf(&script, "read -q %d %d\n", off, n)
		}
		total += e.Length
	}
	script.WriteString("quit\n")
	out, err := run(ctx, []byte(script.String()), "qemu-io")
	if err != nil {
		return err
	}
	if s := strings.TrimSpace(string(out)); strings.Contains(s, "error") || strings.Contains(s, "Error") {
		return fmt.Errorf("qemu-io: %s", s)
	}
	// The backing reference (the NBD export) is meaningless after this run: drop it.
	if _, err := run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-b", "", target); err != nil {
		return err
	}
	j.Log.Infof("disk %d: %d changed bytes in %d extents since %s", disk.ID, total, len(extents), parent)
	return nil
}

// poweroffAnchors applies keepAnchors to the bitmaps in the image files.
func (a *Adapter) poweroffAnchors(ctx context.Context, j *storage.Job) error {
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
				if _, err := run(ctx, nil, "qemu-img", "bitmap", "--remove", disk.Path, anchorName(j.VMID, n)); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}
