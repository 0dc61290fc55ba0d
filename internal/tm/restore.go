package tm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/hostwire"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/remote"
	"onebackup/internal/validate"
)

// Backends opens a backup datastore by DS_MAD (set by the onebackup binary, which links them).
var Backends map[string]backend.Opener

// restoreInPlace is tm/<tm_mad>/restore host:vm_dir vm_id image_id increment_id disk_id
// (`onevm restore`, the VM powered off): the disks of the VM are put back, in place, as they were
// at the given increment of the backup image, all of them (disk_id -1, with the vTPM state) or
// one. Each disk's stored files (the full and the increments up to the point) are streamed from
// the backup datastore to the VM's host one by one and merged there into a new image next to the
// disk, which replaces it only once every disk is ready: a failure or a kill before leaves the
// VM's disks as they were, and no merged copy is ever made on the frontend. oned starts a new
// backup chain afterwards.
func restoreInPlace(ctx context.Context, tmMad string, args []string, stderr io.Writer) error {
	if !contains(matrix.RestoreDrivers(), tmMad) {
		return fmt.Errorf("TM driver %q: in-place restore is served for %v only", tmMad, matrix.RestoreDrivers())
	}
	if len(args) != 5 {
		return errors.New("usage: restore host:vm_dir vm_id image_id increment_id disk_id")
	}
	host, vmDir, err := one.ParseHostDir(args[0])
	if err != nil {
		return err
	}
	if err := validate.Host("host", host); err != nil {
		return err
	}
	ids := map[string]int{}
	for i, name := range []string{"VM id", "image id", "increment id", "disk id"} {
		n, err := strconv.Atoi(args[i+1])
		if err != nil || n < -1 || (n < 0 && i < 2) {
			return fmt.Errorf("invalid %s %q", name, args[i+1])
		}
		ids[name] = n
	}
	vmID, imgID, incID, diskID := ids["VM id"], ids["image id"], ids["increment id"], ids["disk id"]

	c, err := oned.New()
	if err != nil {
		return err
	}
	info := func(method string, id int, decrypt bool) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		v, err := c.Call(cctx, method, id, decrypt)
		if err != nil {
			return "", err
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("%s: oned returned %T, want XML", method, v)
		}
		return s, nil
	}
	vmXML, err := info("one.vm.info", vmID, false)
	if err != nil {
		return fmt.Errorf("cannot load VM %d: %w", vmID, err)
	}
	imgXML, err := info("one.image.info", imgID, false)
	if err != nil {
		return fmt.Errorf("cannot load backup image %d: %w", imgID, err)
	}
	imgMsg, err := one.ParseMessage([]byte(imgXML))
	if err != nil {
		return err
	}
	dsID, err := strconv.Atoi(imgMsg.Text("DATASTORE_ID"))
	if err != nil {
		return fmt.Errorf("backup image %d has no DATASTORE_ID", imgID)
	}
	dsXML, err := info("one.datastore.info", dsID, true)
	if err != nil {
		return fmt.Errorf("cannot load backup datastore %d: %w", dsID, err)
	}
	msg, err := one.ParseMessage([]byte("<DS_DRIVER_ACTION_DATA>" + imgXML + dsXML + "</DS_DRIVER_ACTION_DATA>"))
	if err != nil {
		return err
	}
	ds, err := msg.Datastore()
	if err != nil {
		return err
	}
	open, ok := Backends[ds.DSMad()]
	if !ok {
		return fmt.Errorf("backup image %d is in datastore %d (%s), not a restic or rsync backup datastore", imgID, dsID, ds.DSMad())
	}
	rt := &backend.Runtime{Runner: &remote.Runner{}, Plan: io.Discard, Log: backend.NewLogger(stderr, false)}
	urls, err := backend.List(ctx, rt, open, msg, incID)
	if err != nil {
		return err
	}

	vmMsg, err := one.ParseMessage([]byte(vmXML))
	if err != nil {
		return err
	}
	vm, err := vmMsg.VM()
	if err != nil {
		return err
	}
	disks, err := vm.Disks()
	if err != nil {
		return err
	}
	var selected []int
	for _, d := range disks {
		if diskID >= 0 && d.ID != diskID {
			continue
		}
		if _, ok := urls[strconv.Itoa(d.ID)]; !ok {
			if diskID >= 0 {
				return fmt.Errorf("backup image %d holds no disk %d at increment %d", imgID, diskID, incID)
			}
			continue // a disk that was not backed up keeps its content
		}
		kind, err := matrix.StorageOf(tmMad, d.Format, d.LVMThin)
		if err != nil {
			return fmt.Errorf("disk %d: %w", d.ID, err)
		}
		hv := matrix.Hypervisor(vm.Hypervisor())
		if hv == "" {
			hv = matrix.KVM
		}
		if row, ok := matrix.Lookup(hv, kind); !ok || !row.RestoreInPlace {
			return fmt.Errorf("disk %d is a %s disk of a %s VM: its in-place restore is not served by these drivers", d.ID, kind, hv)
		}
		selected = append(selected, d.ID)
	}
	if diskID >= 0 && len(selected) == 0 {
		return fmt.Errorf("VM %d has no disk %d", vmID, diskID)
	}
	if len(selected) == 0 {
		return fmt.Errorf("backup image %d holds none of the disks of VM %d", imgID, vmID)
	}
	sort.Ints(selected)
	// The vTPM state goes back with a whole-VM restore only: one disk restored leaves the rest
	// of the VM as it is.
	withTPM := diskID < 0 && urls["tpm"] != "" && vm.TPMModel() != ""

	r := &restorer{ctx: ctx, rt: rt, host: host, vmDir: vmDir, stderr: stderr, open: open,
		lookup: func(ctx context.Context, id int) (*one.Datastore, error) {
			if id != dsID {
				return nil, fmt.Errorf("the backup URL names datastore %d, not %d", id, dsID)
			}
			return ds, nil
		}}
	if err := r.host1("restore-begin"); err != nil {
		return err
	}
	err = r.transfer(selected, urls, withTPM)
	if err == nil {
		argv := []string{"restore-apply", "--disks", joinInts(selected), "--tm-mad", tmMad}
		if withTPM {
			argv = append(argv, "--tpm")
		}
		// Through the agent: the VM XML travels in the environment, and a stopped restore
		// gets time to drop what it prepared.
		r.env = map[string]string{hostwire.VMXMLEnv: hostwire.EncodeVMXML([]byte(vmXML))}
		err = r.host1(argv...)
		r.env = nil
	}
	if err != nil {
		// Whatever failed or was cancelled, the VM's disks are still the originals: remove the
		// received files (the host side already did when its stream was cut).
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		r.ctx = actx
		if aerr := r.host1("restore-abort"); aerr != nil {
			fmt.Fprintf(stderr, "WARNING: cleaning the restore area on %s: %s\n", host, one.FailureLine(aerr))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("restore of VM %d cancelled; its disks were left as they were", vmID)
		}
		return fmt.Errorf("restore of VM %d failed, its disks were left as they were: %w", vmID, err)
	}
	fmt.Fprintf(stderr, "INFO: VM %d: disks %s restored in place from backup image %d, increment %s\n", vmID, joinInts(selected), imgID, map[bool]string{true: "last", false: strconv.Itoa(incID)}[incID < 0])
	return nil
}

func joinInts(ns []int) string {
	var s []string
	for _, n := range ns {
		s = append(s, strconv.Itoa(n))
	}
	return strings.Join(s, ":")
}

// restorer moves the stored files of a restore point to the VM's host.
type restorer struct {
	ctx         context.Context
	rt          *backend.Runtime
	host, vmDir string
	stderr      io.Writer
	open        backend.Opener
	lookup      backend.DatastoreLookup
	env         map[string]string // for the next host1 (run through the agent when set)
}

// host1 runs one step of the host side.
func (r *restorer) host1(argv ...string) error {
	full := append([]string{hostwire.HostBinary(), "host"}, argv[0], "--vm-dir", r.vmDir)
	full = append(full, argv[1:]...)
	cmd := remote.Cmd{Target: remote.Target{Host: r.host}, Argv: full, Env: r.env}
	if r.env != nil {
		cmd.StopGrace = hostStopGrace
	}
	res, err := r.rt.Runner.Run(r.ctx, cmd)
	if res != nil && len(res.Stderr) > 0 {
		r.stderr.Write(res.Stderr)
	}
	return err
}

// transfer sends every stored file of the selected disks (oldest first) and the vTPM state.
func (r *restorer) transfer(disks []int, urls map[string]string, tpm bool) error {
	for _, id := range disks {
		store, u, loc, err := backend.ResolveURL(r.ctx, r.rt, r.open, r.lookup, urls[strconv.Itoa(id)])
		if err != nil {
			return err
		}
		if u.RBD {
			return fmt.Errorf("disk %d was backed up in the legacy rbd format (.rbd2 + .rbdiff): restore it as new images (oneimage restore) instead", id)
		}
		lister, ok := store.(backend.ChainLister)
		if !ok {
			return fmt.Errorf("the %s backend cannot list a chain's files", u.Backend)
		}
		files, err := lister.ChainFiles(r.ctx, u, loc)
		if err != nil {
			return err
		}
		for k, f := range files {
			if err := r.send(lister, loc, f, fmt.Sprintf("disk.%d/%d", id, k)); err != nil {
				return fmt.Errorf("disk %d, restore point %s: %w", id, f.Snap, err)
			}
		}
	}
	if !tpm {
		return nil
	}
	store, u, loc, err := backend.ResolveURL(r.ctx, r.rt, r.open, r.lookup, urls["tpm"])
	if err != nil {
		return err
	}
	reader, ok := store.(backend.FileReader)
	if !ok {
		return fmt.Errorf("the %s backend cannot read stored files", u.Backend)
	}
	return r.send(reader, loc, backend.StoredFile{Snap: u.Chain.Last().Snap, Path: u.Path}, "tpm")
}

// send streams one stored file to the host's receiving area, framed (hostwire.CopyFramed).
func (r *restorer) send(reader backend.FileReader, loc backend.Location, f backend.StoredFile, name string) error {
	pr, pw := io.Pipe()
	read := make(chan error, 1)
	go func() {
		fw := hostwire.NewFrameWriter(pw)
		err := reader.ReadFile(r.ctx, loc, f.Snap, f.Path, fw)
		if err == nil {
			err = fw.Close()
		}
		pw.CloseWithError(err)
		read <- err
	}()
	argv := []string{hostwire.HostBinary(), "host", "restore-receive", "--vm-dir", r.vmDir, "--name", name}
	res, err := r.rt.Runner.Run(r.ctx, remote.Cmd{Target: remote.Target{Host: r.host}, Argv: argv, Stdin: pr})
	pr.CloseWithError(errors.New("the receiving side stopped"))
	if rerr := <-read; err == nil && rerr != nil {
		err = rerr
	}
	if res != nil && len(res.Stderr) > 0 {
		r.stderr.Write(res.Stderr)
	}
	return err
}
