package hostcli

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/beevik/etree"

	"onebackup/internal/matrix"
	"onebackup/internal/storage"
)

// VMXMLEnv carries the VM XML (gzip + base64) from the frontend's TM action through the agent,
// which gives the program no stdin.
const VMXMLEnv = "ONEBACKUP_VM_XML"

// EncodeVMXML is the value of VMXMLEnv for a VM XML document.
func EncodeVMXML(xml []byte) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(xml)
	zw.Close()
	return base64.StdEncoding.EncodeToString(b.Bytes())
}

func decodeVMXML(s string) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %v", VMXMLEnv, err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%s is not gzip: %v", VMXMLEnv, err)
	}
	return io.ReadAll(io.LimitReader(zr, 64<<20))
}

// vmXML is the parsed <VM> document with the few lookups the host side needs.
type vmXML struct {
	raw  []byte
	root *etree.Element
}

func parseVMXML(data []byte) (*vmXML, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] != '<' {
		dec, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(data)), ""))
		if err != nil {
			return nil, errors.New("VM XML is neither XML nor base64")
		}
		data = bytes.TrimSpace(dec)
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, fmt.Errorf("VM XML: %v", err)
	}
	root := doc.Root()
	if root != nil && root.Tag != "VM" {
		root = root.FindElement(".//VM")
	}
	if root == nil {
		return nil, errors.New("no <VM> element in the VM XML")
	}
	return &vmXML{raw: data, root: root}, nil
}

func (v *vmXML) text(path string) string {
	e := v.root.FindElement("./" + path)
	if e == nil {
		return ""
	}
	return strings.TrimSpace(e.Text())
}

func (v *vmXML) lastHistory(name string) string {
	hs := v.root.FindElements("./HISTORY_RECORDS/HISTORY")
	if len(hs) == 0 {
		return ""
	}
	e := hs[len(hs)-1].SelectElement(name)
	if e == nil {
		return ""
	}
	return strings.TrimSpace(e.Text())
}

// options are the flags of "host backup" and "host postbackup".
type options struct {
	vmXMLFile string
	disks     string
	vmDir     string
	deployID  string
	backupDir string
	tmMad     string
	live      bool
	poweroff  bool
	failure   bool
	dryRun    bool
	nice      int
	ionice    int
}

// readVMXML takes --vm-xml FILE ("-" = stdin), else $ONEBACKUP_VM_XML, else stdin.
func (o *options) readVMXML() (*vmXML, error) {
	var data []byte
	var err error
	switch {
	case o.vmXMLFile == "-":
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	case o.vmXMLFile != "":
		data, err = os.ReadFile(o.vmXMLFile)
	case os.Getenv(VMXMLEnv) != "":
		data, err = decodeVMXML(os.Getenv(VMXMLEnv))
	default:
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	}
	if err != nil {
		return nil, err
	}
	return parseVMXML(data)
}

// buildJob turns the VM XML and flags into a storage job resolved against the matrix.
func (o *options) buildJob(ctx context.Context, vm *vmXML, log storage.Logger) (*storage.Job, error) {
	vid, err := strconv.Atoi(vm.text("ID"))
	if err != nil || vid < 0 {
		return nil, fmt.Errorf("VM XML has no valid ID (%q)", vm.text("ID"))
	}
	j := &storage.Job{VMID: vid, DryRun: o.dryRun, Log: log}
	j.DeployID = o.deployID
	if j.DeployID == "" {
		j.DeployID = vm.text("DEPLOY_ID")
	}
	j.VMDir = o.vmDir
	if j.VMDir == "" {
		ds := vm.lastHistory("DS_ID")
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

	live := strings.TrimSpace(vm.text("LCM_STATE")) == "69"
	if o.live {
		live = true
	}
	if o.poweroff {
		live = false
	}
	mode := strings.ToUpper(vm.text("BACKUPS/BACKUP_CONFIG/MODE"))
	li := -1
	if s := vm.text("BACKUPS/BACKUP_CONFIG/LAST_INCREMENT_ID"); s != "" {
		if li, err = strconv.Atoi(s); err != nil || li < -1 {
			return nil, fmt.Errorf("invalid LAST_INCREMENT_ID %q", s)
		}
	}
	incremental := mode == "INCREMENT"
	if incremental {
		j.BID, j.PID = li+1, li
	} else {
		j.BID, j.PID = 0, -1
	}
	j.FSFreeze = strings.ToUpper(vm.text("BACKUPS/BACKUP_CONFIG/FS_FREEZE"))
	if j.FSFreeze != "AGENT" && j.FSFreeze != "SUSPEND" {
		j.FSFreeze = "NONE"
	}
	j.Success = !o.failure && !strings.EqualFold(vm.text("BACKUP_RESULT"), "FAILURE")

	hv := matrix.Hypervisor(strings.ToLower(vm.lastHistory("VM_MAD")))
	if hv == "" {
		hv = matrix.KVM
	}
	tm := o.tmMad
	if tm == "" {
		tm = vm.lastHistory("TM_MAD")
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
	var reqs []matrix.Request
	for _, e := range vm.root.FindElements("./TEMPLATE/DISK") {
		get := func(n string) string {
			if c := e.SelectElement(n); c != nil {
				return strings.TrimSpace(c.Text())
			}
			return ""
		}
		id, err := strconv.Atoi(get("DISK_ID"))
		if err != nil || !want[id] {
			continue
		}
		delete(want, id)
		d := storage.Disk{ID: id, Target: get("TARGET"), Path: filepath.Join(j.VMDir, "disk."+strconv.Itoa(id))}
		d.SizeMiB, _ = strconv.ParseInt(get("SIZE"), 10, 64)
		d.Format = strings.ToLower(get("FORMAT"))
		if d.Format == "" {
			d.Format = strings.ToLower(get("DRIVER"))
		}
		if isFileTM(tm) && !o.dryRun || isFileTM(tm) && fileExists(d.Path) {
			// The file on the host is the truth (W-19: a Ceph image copied to an ssh DS is raw).
			if f, err := probeFormat(ctx, d.Path); err != nil {
				return nil, fmt.Errorf("disk %d: %v", id, err)
			} else {
				d.Format = f
			}
		}
		st, err := matrix.StorageOf(tm, get("TM_MAD"), get("TYPE"), d.Format, strings.EqualFold(get("LVM_THIN_ENABLE"), "yes"))
		if err != nil {
			return nil, fmt.Errorf("disk %d: %v", id, err)
		}
		d.Storage = st
		if d.Target == "" {
			return nil, fmt.Errorf("disk %d has no TARGET in the VM XML", id)
		}
		j.Disks = append(j.Disks, d)
		reqs = append(reqs, matrix.Request{Hypervisor: hv, Storage: st, Incremental: incremental, Live: live,
			IncrementMode: matrix.IncrementMode(vm.text("BACKUPS/BACKUP_CONFIG/INCREMENT_MODE")), FSFreeze: j.FSFreeze})
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
		return nil, errors.New("live backup without a deploy id (libvirt domain)")
	}
	return j, nil
}

func isFileTM(tm string) bool {
	switch strings.ToLower(tm) {
	case "qcow2", "shared", "ssh", "local":
		return true
	}
	return false
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func probeFormat(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", "--force-share", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("qemu-img info %s: %s", path, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", err
	}
	var info struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return "", err
	}
	return info.Format, nil
}
