package hostcli

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"onebackup/internal/qcow2"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"onebackup/internal/hostjob"
	"onebackup/internal/hostwire"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage"
)

// In-place restore on the VM's host (TM restore of file system datastores), in three steps the
// frontend drives:
//
//	host restore-begin   --vm-dir D                 empty the receiving area D/restore.tmp
//	host restore-receive --vm-dir D --name disk.N/K one stored file (restore point K of disk N,
//	                                                or "tpm"), framed on stdin
//	host restore-apply   --vm-dir D --disks N:M [--tpm]
//	                                                merge each disk's files into a new image
//	                                                next to the disk, then swap it in
//	host restore-abort   --vm-dir D                 remove everything a restore left
//
// Until restore-apply swaps the new images in, the VM's disks are untouched: a restore that fails
// or is killed before leaves the originals, and receive removes the area itself when its stream
// is cut (the frontend died), so nothing stays in the VM directory.

const restoreArea = "restore.tmp"

var pieceName = regexp.MustCompile(`^(disk\.[0-9]+/[0-9]+|tpm)$`)

type restoreOptions struct {
	vmDir, name, disks, tmMad string
	tpm                       bool
}

func restoreCommands() []*cobra.Command {
	o := &restoreOptions{}
	mk := func(use, short string, run func(context.Context, *restoreOptions) error) *cobra.Command {
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
				defer stop()
				if !filepath.IsAbs(o.vmDir) || strings.Contains(o.vmDir, "/../") || strings.HasSuffix(o.vmDir, "/..") {
					return fmt.Errorf("VM directory %q is not an absolute path without '..'", o.vmDir)
				}
				o.vmDir = filepath.Clean(o.vmDir)
				return run(ctx, o)
			},
		}
		c.Flags().StringVar(&o.vmDir, "vm-dir", "", "VM directory on this host")
		c.MarkFlagRequired("vm-dir")
		return c
	}
	begin := mk("restore-begin", "Prepare an in-place restore: empty the receiving area", func(ctx context.Context, o *restoreOptions) error {
		if err := abortRestore(o.vmDir); err != nil {
			return err
		}
		return os.Mkdir(filepath.Join(o.vmDir, restoreArea), 0o700)
	})
	receive := mk("restore-receive", "Receive one stored file of an in-place restore (framed, on stdin)", runReceive)
	receive.Flags().StringVar(&o.name, "name", "", "disk.<id>/<restore point> or tpm")
	apply := mk("restore-apply", "Merge the received files into new disk images and swap them in", runApply)
	apply.Flags().StringVar(&o.disks, "disks", "", "disk ids to restore, colon separated")
	apply.Flags().BoolVar(&o.tpm, "tpm", false, "restore the vTPM state too")
	apply.Flags().StringVar(&o.tmMad, "tm-mad", "", "system datastore TM_MAD (which storage side restores each disk)")
	apply.MarkFlagRequired("tm-mad")
	abort := mk("restore-abort", "Remove what an in-place restore left", func(ctx context.Context, o *restoreOptions) error {
		return abortRestore(o.vmDir)
	})
	return []*cobra.Command{begin, receive, apply, abort}
}

// abortRestore removes the receiving area and any new file or directory apply left next to the
// file disks (names carry storage.RestoreTempSuffix, so nothing else matches; an RBD image
// apply created is removed by its Discard).
func abortRestore(vmDir string) error {
	errs := []error{os.RemoveAll(filepath.Join(vmDir, restoreArea))}
	for _, pat := range []string{"*" + storage.RestoreTempSuffix + "*", "disk.*.snap/*" + storage.RestoreTempSuffix + "*"} {
		left, _ := filepath.Glob(filepath.Join(vmDir, pat))
		for _, p := range left {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

func runReceive(ctx context.Context, o *restoreOptions) (err error) {
	if !pieceName.MatchString(o.name) {
		return fmt.Errorf("invalid restore file name %q (disk.<id>/<n> or tpm)", o.name)
	}
	area := filepath.Join(o.vmDir, restoreArea)
	if _, err := os.Stat(area); err != nil {
		return fmt.Errorf("no restore in progress in %s (restore-begin first)", o.vmDir)
	}
	// Any failure here spoils the whole restore: drop the area, so that nothing of it stays.
	defer func() {
		if err != nil {
			os.RemoveAll(area)
		}
	}()
	dst := filepath.Join(area, o.name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	n, err := hostwire.CopyFramed(f, os.Stdin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("receiving %s (%d bytes received): %w", o.name, n, err)
	}
	return ctx.Err()
}

func runApply(ctx context.Context, o *restoreOptions) error {
	var ids []int
	for _, v := range strings.Split(o.disks, ":") {
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("invalid disk id %q in %q", v, o.disks)
		}
		ids = append(ids, n)
	}
	if len(ids) == 0 && !o.tpm {
		return errors.New("nothing to restore (--disks is empty)")
	}
	doc, err := (&options{}).readVMXML()
	if err != nil {
		return err
	}
	vmID, err := doc.vm.ID()
	if err != nil {
		return err
	}
	disks, err := doc.vm.Disks()
	if err != nil {
		return err
	}
	unlock, err := lockVM(ctx, o.vmDir)
	if err != nil {
		return err
	}
	defer unlock()
	area := filepath.Join(o.vmDir, restoreArea)
	log := logger{os.Stderr}
	var ready []storage.Restored
	fail := func(err error) error {
		for _, r := range ready {
			if r != nil {
				r.Discard()
			}
		}
		abortRestore(o.vmDir)
		return err
	}
	for _, id := range ids {
		i := slices.IndexFunc(disks, func(d one.Disk) bool { return d.ID == id })
		if i < 0 {
			return fail(fmt.Errorf("disk %d is not in the VM template", id))
		}
		r, err := prepareDisk(ctx, o, vmID, disks[i])
		if err != nil {
			return fail(fmt.Errorf("disk %d: %w", id, err))
		}
		ready = append(ready, r)
	}
	var tpmNew string
	if o.tpm {
		tpmNew = filepath.Join(o.vmDir, "tpm"+storage.RestoreTempSuffix)
		if err := untarTPM(filepath.Join(area, "tpm"), tpmNew); err != nil {
			return fail(fmt.Errorf("vTPM state: %w", err))
		}
	}
	// Everything is ready: swap (renames, each atomic). A cancel no longer stops them.
	for i, r := range ready {
		if err := r.Swap(); err != nil {
			return fail(fmt.Errorf("disk %d: %w", ids[i], err))
		}
		ready[i] = nil
		log.Infof("disk %d restored in place (%s)", ids[i], r)
	}
	if tpmNew != "" {
		if err := storage.SwapDir(filepath.Join(tpmNew, "tpm"), filepath.Join(o.vmDir, "tpm")); err != nil {
			return fail(fmt.Errorf("vTPM state: %w", err))
		}
		log.Infof("vTPM state restored")
	}
	return abortRestore(o.vmDir)
}

// prepareDisk chains the received files of one disk (a full and the increments up to the point;
// stored increments name no usable backing file) and has the disk's storage side write the
// restored content next to the disk, without touching it yet.
func prepareDisk(ctx context.Context, o *restoreOptions, vmID int, d one.Disk) (storage.Restored, error) {
	kind, err := matrix.StorageOf(o.tmMad, d.Format, d.LVMThin)
	if err != nil {
		return nil, err
	}
	st, err := storage.Get(kind.Side())
	if err != nil {
		return nil, err
	}
	rs, ok := st.(storage.Restorer)
	if !ok {
		return nil, fmt.Errorf("the %s storage side does not restore in place", kind.Side())
	}
	dir := filepath.Join(o.vmDir, restoreArea, fmt.Sprintf("disk.%d", d.ID))
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		return nil, fmt.Errorf("no backup files were received for it")
	}
	var points []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			return nil, fmt.Errorf("unexpected file %s in the receiving area", e.Name())
		}
		points = append(points, n)
	}
	sort.Ints(points)
	files := make([]string, len(points))
	for i, n := range points {
		files[i] = filepath.Join(dir, strconv.Itoa(n))
		if i > 0 {
			if _, err := hostjob.Run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-F", "qcow2", "-b", files[i-1], files[i]); err != nil {
				return nil, err
			}
		}
	}
	// What a guest must read from the restored disk, from the received files themselves (their
	// bytes were checked against the backups' records as they were sent).
	want, geo, err := qcow2.ChainDigest(files)
	if err != nil && !errors.Is(err, qcow2.ErrUnsupported) {
		return nil, fmt.Errorf("cannot read the received backup files: %w", err)
	}
	r, err := rs.PrepareRestore(ctx, storage.RestoreTarget{VMID: vmID, VMDir: o.vmDir, Disk: d, Top: files[len(files)-1], Log: logger{os.Stderr}})
	if err != nil || geo.ClusterSize == 0 {
		return r, err
	}
	if cr, ok := r.(storage.ContentReader); ok {
		got, gotGeo, err := cr.ContentDigest(geo.ClusterSize)
		if err == nil && gotGeo == geo && got != want {
			err = fmt.Errorf("the restored image does not hold what the backups hold (guest-visible content digest %.16s…, backups %.16s…)", got, want)
		}
		if err != nil {
			r.Discard()
			return nil, err
		}
	}
	return r, nil
}

// untarTPM extracts disk.tpm.0 (a tar.gz whose members start with "tpm/") into dir/tpm.
func untarTPM(archive, dir string) error {
	f, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	os.RemoveAll(dir)
	tr := tar.NewReader(zr)
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(hd.Name)
		if name != "tpm" && !strings.HasPrefix(name, "tpm/") {
			return fmt.Errorf("unexpected member %q (not under tpm/)", hd.Name)
		}
		p := filepath.Join(dir, name)
		switch hd.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, os.FileMode(hd.Mode)&0o700|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, io.LimitReader(tr, 64<<20))
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected member %q (type %c)", hd.Name, hd.Typeflag)
		}
	}
}
