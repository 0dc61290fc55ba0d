package hostcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"onebackup/internal/hostjob"
	"onebackup/internal/hostwire"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/storage"
)

// options are the flags of "host backup" and "host postbackup".
type options struct {
	vmXMLFile string
	disks     string
	vmDir     string
	deployID  string
	backupDir string
	tmMad     string
	chainFmt  string
	optIns    []string // datastore attributes enabling opt-in matrix cells
	phase     string
	live      bool
	poweroff  bool
	failure   bool
	dryRun    bool
	nice      int
	ionice    int
}

// vmDoc is the VM XML as received (kept whole for vm.xml) and its typed view.
type vmDoc struct {
	raw []byte
	vm  *one.VM
}

// readVMXML takes --vm-xml FILE ("-" = stdin), else $ONEBACKUP_VM_XML, else stdin.
func (o *options) readVMXML() (*vmDoc, error) {
	var data []byte
	var err error
	switch {
	case o.vmXMLFile == "-":
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	case o.vmXMLFile != "":
		data, err = os.ReadFile(o.vmXMLFile)
	case os.Getenv(hostwire.VMXMLEnv) != "":
		data, err = hostwire.DecodeVMXML(os.Getenv(hostwire.VMXMLEnv))
	default:
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	}
	if err != nil {
		return nil, err
	}
	return parseVMXML(data)
}

func parseVMXML(data []byte) (*vmDoc, error) {
	msg, err := one.ParseMessage(data)
	if err != nil {
		return nil, fmt.Errorf("VM XML: %w", err)
	}
	vm, err := msg.VM()
	if err != nil {
		return nil, fmt.Errorf("VM XML: %w", err)
	}
	return &vmDoc{raw: msg.Raw(), vm: vm}, nil
}

// buildJob turns the VM XML and flags into a job resolved against the matrix: the row's
// hypervisor and storage sides are then the ones to run it.
func (o *options) buildJob(ctx context.Context, doc *vmDoc, log hostjob.Logger) (*hostjob.Job, error) {
	vm := doc.vm
	vid, err := vm.ID()
	if err != nil {
		return nil, err
	}
	cfg, err := vm.BackupConfig()
	if err != nil {
		return nil, err
	}
	j := &hostjob.Job{VMID: vid, DryRun: o.dryRun, Log: log}
	j.DeployID = o.deployID
	if j.DeployID == "" {
		j.DeployID = vm.DeployID()
	}
	j.VMDir = o.vmDir
	if j.VMDir == "" {
		ds := vm.History("DS_ID")
		if ds == "" {
			return nil, errors.New("--vm-dir not given and the VM XML has no HISTORY/DS_ID")
		}
		j.VMDir = filepath.Join("/var/lib/one/datastores", ds, strconv.Itoa(vid))
	}
	if !filepath.IsAbs(j.VMDir) {
		return nil, fmt.Errorf("VM directory %q is not absolute", j.VMDir)
	}
	j.VMDir = filepath.Clean(j.VMDir)
	j.TmpDir = filepath.Join(j.VMDir, "tmp")
	j.BackupDir = o.backupDir
	if j.BackupDir == "" {
		j.BackupDir = filepath.Join(j.VMDir, "backup")
	}
	if !filepath.IsAbs(j.BackupDir) {
		return nil, fmt.Errorf("backup directory %q is not absolute", j.BackupDir)
	}
	j.BackupDir = filepath.Clean(j.BackupDir)

	live := vm.Live()
	if o.live {
		live = true
	}
	if o.poweroff {
		live = false
	}
	if cfg.Incremental() {
		j.BID, j.PID = cfg.LastIncrementID+1, cfg.LastIncrementID
	} else {
		j.BID, j.PID = 0, -1
	}
	j.FSFreeze = cfg.FSFreeze
	switch o.chainFmt {
	case "", "raw", "qcow2", "rbd":
		j.ChainFormat = o.chainFmt
	default:
		return nil, fmt.Errorf("unknown chain format %q (raw or rbd)", o.chainFmt)
	}
	j.Success = !o.failure && !vm.BackupFailed()

	hv := matrix.Hypervisor(vm.Hypervisor())
	if hv == "" {
		hv = matrix.KVM
	}
	tm := o.tmMad
	if tm == "" {
		tm = vm.SystemTM()
	}
	if tm == "" {
		return nil, errors.New("no system datastore TM_MAD (--tm-mad or HISTORY/TM_MAD)")
	}

	want := map[int]bool{}
	for _, s := range strings.Split(o.disks, ":") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("invalid disk id %q in %q", s, o.disks)
		}
		want[n] = true
	}
	if len(want) == 0 {
		return nil, errors.New("no disks to back up (--disks is empty)")
	}
	disks, err := vm.Disks()
	if err != nil {
		return nil, err
	}
	if j.SystemDS, err = strconv.Atoi(vm.History("DS_ID")); err != nil {
		j.SystemDS = -1 // absent: only fs_lvm_ssh disks need it, and they say so
	}
	j.LVMDS = one.FirstLVMDatastore(disks)
	j.SystemTM = tm
	var reqs []matrix.Request
	for _, od := range disks {
		if !want[od.ID] {
			continue
		}
		delete(want, od.ID)
		d := hostjob.Disk{Disk: od, Format: od.Format}
		if d.Target == "" {
			return nil, fmt.Errorf("disk %d has no TARGET in the VM XML", d.ID)
		}
		// The storage side serving this kind of disk looks at it on this host first (a file's
		// real format); a side that is not built leaves the XML's view to the matrix.
		kind, err := matrix.StorageOf(tm, d.Format, d.LVMThin)
		if err != nil {
			return nil, fmt.Errorf("disk %d: %w", d.ID, err)
		}
		if st, err := storage.Get(kind.Side()); err == nil {
			if err := st.Inspect(ctx, j.VMDir, &d, o.dryRun); err != nil {
				return nil, fmt.Errorf("disk %d: %w", d.ID, err)
			}
			if kind, err = matrix.StorageOf(tm, d.Format, d.LVMThin); err != nil {
				return nil, fmt.Errorf("disk %d: %w", d.ID, err)
			}
		}
		d.Kind = kind
		j.Disks = append(j.Disks, d)
		reqs = append(reqs, matrix.Request{Hypervisor: hv, Storage: kind, Incremental: cfg.Incremental(), Live: live,
			IncrementMode: matrix.IncrementMode(cfg.IncrementMode), FSFreeze: j.FSFreeze, Interactive: cfg.Interactive,
			OptIns: o.optIns})
	}
	for id := range want {
		// W-17: never a partial backup.
		return nil, fmt.Errorf("disk %d is selected for backup but not in the VM template", id)
	}
	dec, err := matrix.ResolveVM(reqs)
	if err != nil {
		return nil, err
	}
	j.Decision = dec
	if live && j.DeployID == "" {
		return nil, errors.New("live backup without a deploy id (the VM's domain or container)")
	}
	return j, nil
}
