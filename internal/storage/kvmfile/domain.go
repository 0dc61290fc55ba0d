package kvmfile

// The running domain as libvirt and QEMU see it: its disks and layers, checkpoints, bitmaps and
// block jobs.

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"onebackup/internal/one"
	"onebackup/internal/storage"
)

// libvirtURI is $LIBVIRT_URI, else LIBVIRT_URI from the host's kvmrc (read on the host, not the
// frontend: W-18), else qemu:///system.
func libvirtURI() string {
	if u := os.Getenv("LIBVIRT_URI"); u != "" {
		return u
	}
	kvmrc, _ := one.LoadConf(filepath.Join(one.HostRemotesDir(), "etc/vmm/kvm/kvmrc"))
	if u := kvmrc["LIBVIRT_URI"]; u != "" {
		return u
	}
	return "qemu:///system"
}

// domain is an open libvirt connection with the VM's domain; close releases both.
type domain struct {
	conn *libvirt.Connect
	dom  *libvirt.Domain
}

func openDomain(deployID string) (*domain, error) {
	conn, err := libvirt.NewConnect(libvirtURI())
	if err != nil {
		return nil, fmt.Errorf("cannot connect to libvirt at %s: %v", libvirtURI(), err)
	}
	dom, err := conn.LookupDomainByUUIDString(deployID)
	if err != nil {
		dom, err = conn.LookupDomainByName(deployID)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("domain %s not found on this host: %v", deployID, err)
	}
	return &domain{conn: conn, dom: dom}, nil
}

func (d *domain) close() {
	if d == nil {
		return
	}
	d.dom.Free()
	d.conn.Close()
}

// liveDomain opens the running domain of a live backup; a power-off backup has none (nil).
func liveDomain(j *storage.Job) (*domain, error) {
	if !j.Decision.Live {
		return nil, nil
	}
	return openDomain(j.DeployID)
}

// domDisk is one disk of the running domain.
type domDisk struct {
	Target string
	Source string
	Format string
	Chain  []string // backing files, top first after Source
}

type xmlSource struct {
	File string `xml:"file,attr"`
}

type xmlBacking struct {
	Source  xmlSource   `xml:"source"`
	Backing *xmlBacking `xml:"backingStore"`
}

func (d *domain) disks() ([]domDisk, error) {
	desc, err := d.dom.GetXMLDesc(0)
	if err != nil {
		return nil, err
	}
	var x struct {
		Disks []struct {
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source xmlSource `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Backing *xmlBacking `xml:"backingStore"`
		} `xml:"devices>disk"`
	}
	if err := xml.Unmarshal([]byte(desc), &x); err != nil {
		return nil, err
	}
	var out []domDisk
	for _, dd := range x.Disks {
		if dd.Device != "" && dd.Device != "disk" {
			continue
		}
		disk := domDisk{Target: dd.Target.Dev, Source: dd.Source.File, Format: dd.Driver.Type}
		for b := dd.Backing; b != nil; b = b.Backing {
			if b.Source.File != "" {
				disk.Chain = append(disk.Chain, b.Source.File)
			}
		}
		out = append(out, disk)
	}
	return out, nil
}

// layersIn lists the domain's image files under dir (nothing when the domain is not running).
func layersIn(j *storage.Job, dir string) []string {
	if !j.Decision.Live {
		return nil
	}
	d, err := openDomain(j.DeployID)
	if err != nil {
		return nil
	}
	defer d.close()
	disks, err := d.disks()
	if err != nil {
		return nil
	}
	var used []string
	for _, dd := range disks {
		for _, f := range append([]string{dd.Source}, dd.Chain...) {
			if f != "" && strings.HasPrefix(filepath.Clean(f), filepath.Clean(dir)+"/") {
				used = append(used, f)
			}
		}
	}
	return used
}

// qmp runs a QMP command through libvirt.
func (d *domain) qmp(cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	data, _ := json.Marshal(req)
	res, err := d.dom.QemuMonitorCommand(string(data), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return fmt.Errorf("QMP %s: %v", cmd, err)
	}
	if out == nil {
		return nil
	}
	var env struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(res), &env); err != nil {
		return err
	}
	return json.Unmarshal(env.Return, out)
}

type liveBitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
}

type blockNode struct {
	NodeName string       `json:"node-name"`
	Drv      string       `json:"drv"`
	File     string       `json:"file"`
	Bitmaps  []liveBitmap `json:"dirty-bitmaps"`
}

// formatNode finds the qcow2 node QEMU uses for a top image file, with its bitmaps.
func (d *domain) formatNode(file string) (*blockNode, error) {
	var nodes []blockNode
	if err := d.qmp("query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	real, _ := filepath.EvalSymlinks(file)
	for i, n := range nodes {
		if n.Drv == "qcow2" && (n.File == file || n.File == real) {
			return &nodes[i], nil
		}
	}
	return nil, fmt.Errorf("no qcow2 block node for %s in the running VM", file)
}

// checkpoints lists this VM's checkpoint ids known to libvirt, ascending.
func (d *domain) checkpoints(vid int) ([]int, error) {
	cps, err := d.dom.ListAllCheckpoints(0)
	if err != nil {
		return nil, err
	}
	var ids []int
	for _, cp := range cps {
		name, err := cp.GetName()
		if err == nil {
			if n, ok := anchorID(vid, name); ok {
				ids = append(ids, n)
			}
		}
		cp.Free()
	}
	sort.Ints(ids)
	return ids, nil
}

func (d *domain) deleteCheckpoint(name string) error {
	cp, err := d.dom.CheckpointLookupByName(name, 0)
	if err != nil {
		return nil // already gone
	}
	defer cp.Free()
	if err := cp.Delete(0); err != nil {
		// The bitmaps are gone or broken: drop the metadata at least.
		if err2 := cp.Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY); err2 != nil {
			return fmt.Errorf("cannot delete checkpoint %s: %v", name, err)
		}
	}
	return nil
}

// activeBackupJob says whether a backup job runs on the domain.
func (d *domain) activeBackupJob() bool {
	info, err := d.dom.GetJobStats(0)
	if err != nil || info.Type == libvirt.DOMAIN_JOB_NONE {
		return false
	}
	return !info.OperationSet || info.Operation == libvirt.DOMAIN_JOB_OPERATION_BACKUP
}

// abortBackupJob stops a running backup job (push or pull) and waits until it is gone.
func (d *domain) abortBackupJob() error {
	if !d.activeBackupJob() {
		return nil
	}
	if err := d.dom.AbortJob(); err != nil && d.activeBackupJob() {
		return fmt.Errorf("cannot abort the running backup job: %v", err)
	}
	for i := 0; i < 300 && d.activeBackupJob(); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if d.activeBackupJob() {
		return errors.New("the aborted backup job does not end")
	}
	return nil
}

// waitJob waits for the push job to end; a cancelled ctx aborts it.
func (d *domain) waitJob(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := d.dom.GetJobInfo()
		if err != nil {
			return fmt.Errorf("backup job state: %v", err)
		}
		if info.Type == libvirt.DOMAIN_JOB_NONE {
			break
		}
		select {
		case <-ctx.Done():
			d.abortBackupJob()
			return ctx.Err()
		case <-tick.C:
		}
	}
	st, err := d.dom.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED)
	if err != nil {
		return fmt.Errorf("backup job result: %v", err)
	}
	if st.Type != libvirt.DOMAIN_JOB_COMPLETED {
		return fmt.Errorf("the backup job did not complete (libvirt job type %d)", st.Type)
	}
	return nil
}
