package hostcli

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"onebackup/internal/hostjob"
	"onebackup/internal/hostwire"
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

// restoreTemp marks the files and directories apply creates next to a disk before the swap.
const restoreTemp = ".onebackup-restore"

var pieceName = regexp.MustCompile(`^(disk\.[0-9]+/[0-9]+|tpm)$`)

type restoreOptions struct {
	vmDir, name, disks string
	tpm                bool
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
	abort := mk("restore-abort", "Remove what an in-place restore left", func(ctx context.Context, o *restoreOptions) error {
		return abortRestore(o.vmDir)
	})
	return []*cobra.Command{begin, receive, apply, abort}
}

// abortRestore removes the receiving area and any new image or directory apply left next to the
// disks (names carry restoreTemp, so nothing else matches).
func abortRestore(vmDir string) error {
	errs := []error{os.RemoveAll(filepath.Join(vmDir, restoreArea))}
	for _, pat := range []string{"*" + restoreTemp + "*", "disk.*.snap/*" + restoreTemp + "*"} {
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

// newImage is a merged disk ready to be swapped in.
type newImage struct {
	id       int
	link     string // <VM dir>/disk.<id>
	target   string // the file the VM's disk resolves to, replaced
	tmp      string // the new image, next to target
	snapsDir string // <VM dir>/disk.<id>.snap when target lives in it ("" otherwise)
}

func runApply(ctx context.Context, o *restoreOptions) error {
	var ids []int
	for _, s := range strings.Split(o.disks, ":") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return fmt.Errorf("invalid disk id %q in %q", s, o.disks)
		}
		ids = append(ids, n)
	}
	if len(ids) == 0 && !o.tpm {
		return errors.New("nothing to restore (--disks is empty)")
	}
	unlock, err := lockVM(ctx, o.vmDir)
	if err != nil {
		return err
	}
	defer unlock()
	area := filepath.Join(o.vmDir, restoreArea)
	log := logger{os.Stderr}
	var imgs []*newImage
	fail := func(err error) error {
		abortRestore(o.vmDir)
		return err
	}
	for _, id := range ids {
		img, err := mergeDisk(ctx, o.vmDir, id)
		if err != nil {
			return fail(fmt.Errorf("disk %d: %w", id, err))
		}
		imgs = append(imgs, img)
	}
	var tpmNew string
	if o.tpm {
		tpmNew = filepath.Join(o.vmDir, "tpm"+restoreTemp)
		if err := untarTPM(filepath.Join(area, "tpm"), tpmNew); err != nil {
			return fail(fmt.Errorf("vTPM state: %w", err))
		}
	}
	// Everything is ready: swap. Renames only, each atomic; a cancel no longer stops them.
	for _, img := range imgs {
		if err := swapIn(img); err != nil {
			return fail(fmt.Errorf("disk %d: %w", img.id, err))
		}
		log.Infof("disk %d restored in place (%s)", img.id, img.target)
	}
	if tpmNew != "" {
		if err := swapDir(filepath.Join(tpmNew, "tpm"), filepath.Join(o.vmDir, "tpm")); err != nil {
			return fail(fmt.Errorf("vTPM state: %w", err))
		}
		log.Infof("vTPM state restored")
	}
	return abortRestore(o.vmDir)
}

// mergeDisk rebuilds disk id's image at the restore point from the received files (a full and
// the increments up to it) as a new standalone image in the disk's own format, next to the file
// the disk resolves to.
func mergeDisk(ctx context.Context, vmDir string, id int) (*newImage, error) {
	dir := filepath.Join(vmDir, restoreArea, fmt.Sprintf("disk.%d", id))
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
	img := &newImage{id: id, link: filepath.Join(vmDir, fmt.Sprintf("disk.%d", id))}
	if img.target, err = filepath.EvalSymlinks(img.link); err != nil {
		return nil, fmt.Errorf("the VM's disk %s cannot be found: %w", img.link, err)
	}
	if snaps := img.link + ".snap"; filepath.Dir(img.target) == snaps {
		img.snapsDir = snaps
	}
	format, err := imageFormat(ctx, img.target)
	if err != nil {
		return nil, err
	}
	files := make([]string, len(points))
	for i, n := range points {
		files[i] = filepath.Join(dir, strconv.Itoa(n))
		if i > 0 {
			// Stored increments name no (or a meaningless) backing file: chain them here.
			if _, err := hostjob.Run(ctx, nil, "qemu-img", "rebase", "-q", "-u", "-F", "qcow2", "-b", files[i-1], files[i]); err != nil {
				return nil, err
			}
		}
	}
	img.tmp = filepath.Join(filepath.Dir(img.target), "."+filepath.Base(img.target)+restoreTemp)
	if _, err := hostjob.Run(ctx, nil, "qemu-img", "convert", "-q", "-f", "qcow2", "-O", format, files[len(files)-1], img.tmp); err != nil {
		os.Remove(img.tmp)
		return nil, err
	}
	return img, nil
}

func imageFormat(ctx context.Context, file string) (string, error) {
	out, err := hostjob.Run(ctx, nil, "qemu-img", "info", "-U", "--output=json", file)
	if err != nil {
		return "", err
	}
	var info struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	switch info.Format {
	case "qcow2", "raw":
		return info.Format, nil
	}
	return "", fmt.Errorf("%s is a %s image: only qcow2 and raw disks are restored in place", file, info.Format)
}

// swapIn puts a merged image in place of the disk. A disk laid out as OpenNebula's qcow2 driver
// does (disk.<id> → disk.<id>.snap/<n>, snapshots as layers below) gets a fresh disk.<id>.snap
// holding only 0 (the restored image) and its self link, as after a new deployment: the old
// layers belong to a state the VM no longer has. Any other disk file is replaced by rename.
func swapIn(img *newImage) error {
	if img.snapsDir == "" {
		return os.Rename(img.tmp, img.target)
	}
	fresh := img.snapsDir + restoreTemp
	os.RemoveAll(fresh)
	if err := os.Mkdir(fresh, 0o755); err != nil {
		return err
	}
	if err := os.Rename(img.tmp, filepath.Join(fresh, "0")); err != nil {
		return err
	}
	if err := os.Symlink(".", filepath.Join(fresh, filepath.Base(img.snapsDir))); err != nil {
		return err
	}
	if err := swapDir(fresh, img.snapsDir); err != nil {
		return err
	}
	link := img.link + restoreTemp
	os.Remove(link)
	if err := os.Symlink(filepath.Base(img.snapsDir)+"/0", link); err != nil {
		return err
	}
	return os.Rename(link, img.link)
}

// swapDir replaces directory dst by src (the old one is removed once the new one is in place).
func swapDir(src, dst string) error {
	old := dst + restoreTemp + ".old"
	os.RemoveAll(old)
	if _, err := os.Lstat(dst); err == nil {
		if err := os.Rename(dst, old); err != nil {
			return err
		}
	}
	if err := os.Rename(src, dst); err != nil {
		os.Rename(old, dst)
		return err
	}
	return os.RemoveAll(old)
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
