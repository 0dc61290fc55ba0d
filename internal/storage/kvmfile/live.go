package kvmfile

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"onebackup/internal/storage"
)

// libvirtURI is $LIBVIRT_URI, else LIBVIRT_URI from the host's kvmrc (read on the host, not the
// frontend: W-18), else qemu:///system.
func libvirtURI() string {
	if u := os.Getenv("LIBVIRT_URI"); u != "" {
		return u
	}
	remotes := os.Getenv("ONEBACKUP_HOST_REMOTES")
	if remotes == "" {
		remotes = "/var/tmp/one"
	}
	if f, err := os.Open(filepath.Join(remotes, "etc/vmm/kvm/kvmrc")); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "export "))
			if v, ok := strings.CutPrefix(line, "LIBVIRT_URI="); ok {
				return strings.Trim(v, `"'`)
			}
		}
	}
	return "qemu:///system"
}

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

func (a *Adapter) liveCleanup(ctx context.Context, j *storage.Job, jr journal) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	var errs []error
	if err := d.abortBackupJob(); err != nil {
		errs = append(errs, err)
	}
	if err := repairLinks(d, j); err != nil {
		errs = append(errs, err)
	}
	if jr.Frozen != "" {
		if err := thaw(d, jr.Frozen); err != nil && jr.Frozen == "SUSPEND" {
			errs = append(errs, err)
		} else {
			if err != nil {
				// A guest agent that does not answer cannot hold a freeze either.
				j.Log.Warnf("VM %d: thaw after an earlier run: %v", j.VMID, err)
			}
			j.Log.Warnf("VM %d was left %s by an earlier run: thawed", j.VMID, map[string]string{"AGENT": "frozen", "SUSPEND": "suspended"}[jr.Frozen])
			jr.Frozen = ""
			saveJournal(j.TmpDir, jr)
		}
	}
	return errors.Join(errs...)
}

// freeze applies FS_FREEZE (recorded in the journal first) and returns the undo.
func freeze(ctx context.Context, d *domain, j *storage.Job) (func() error, error) {
	mode := strings.ToUpper(j.FSFreeze)
	if mode != "AGENT" && mode != "SUSPEND" {
		return func() error { return nil }, nil
	}
	jr := loadJournal(j.TmpDir)
	jr.Frozen = mode
	if err := saveJournal(j.TmpDir, jr); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		if mode == "AGENT" {
			done <- d.dom.FSFreeze(nil, 0)
		} else {
			done <- d.dom.Suspend()
		}
	}()
	var err error
	freezeFailed := false
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		err = errors.New("timed out after 60 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	undo := func() error {
		if err := thaw(d, mode); err != nil && !(mode == "AGENT" && freezeFailed) {
			return err
		}
		jr := loadJournal(j.TmpDir)
		jr.Frozen = ""
		return saveJournal(j.TmpDir, jr)
	}
	if err != nil {
		freezeFailed = true
		undo() // a freeze that half happened (or timed out late) must not stay
		return nil, fmt.Errorf("FS_FREEZE=%s failed on VM %d (set FS_FREEZE=NONE to back up without freezing): %v", mode, j.VMID, err)
	}
	j.Log.Infof("VM %d %s for the backup point", j.VMID, map[string]string{"AGENT": "filesystems frozen", "SUSPEND": "suspended"}[mode])
	return undo, nil
}

func thaw(d *domain, mode string) error {
	switch mode {
	case "AGENT":
		if err := d.dom.FSThaw(nil, 0); err != nil {
			return fmt.Errorf("cannot thaw the guest filesystems: %v", err)
		}
	case "SUSPEND":
		st, _, err := d.dom.GetState()
		if err == nil && st != libvirt.DOMAIN_PAUSED {
			return nil
		}
		if err := d.dom.Resume(); err != nil {
			return fmt.Errorf("cannot resume the VM: %v", err)
		}
	}
	return nil
}

// parentUsable says whether checkpoint PID can serve as the base of an increment, redefining
// its libvirt metadata when only the bitmaps survived (transient domains forget checkpoints at
// every power cycle). The reason is set when CBT was lost.
func (d *domain) parentUsable(j *storage.Job, targets map[int]domDisk) (bool, string) {
	name := anchorName(j.VMID, j.PID)
	for _, disk := range j.Disks {
		node, err := d.formatNode(targets[disk.ID].Source)
		if err != nil {
			return false, err.Error()
		}
		found := false
		for _, b := range node.Bitmaps {
			if b.Name == name {
				found = true
				if b.Inconsistent || !b.Recording {
					return false, fmt.Sprintf("bitmap %s of disk %d is inconsistent (QEMU stopped uncleanly)", name, disk.ID)
				}
			}
		}
		if !found {
			return false, fmt.Sprintf("bitmap %s is missing from disk %d", name, disk.ID)
		}
	}
	if cp, err := d.dom.CheckpointLookupByName(name, 0); err == nil {
		cp.Free()
		return true, ""
	}
	all, err := d.disks()
	if err != nil {
		return false, err.Error()
	}
	selected := map[string]int{}
	for _, disk := range j.Disks {
		selected[targets[disk.ID].Target] = disk.ID
	}
	cpXML := strings.Replace(checkpointXMLAll(name, all, selected), "</name>", fmt.Sprintf("</name><creationTime>%d</creationTime>", time.Now().Unix()), 1)
	cp, err := d.dom.CreateCheckpointXML(cpXML, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE)
	if err != nil {
		return false, fmt.Sprintf("checkpoint %s metadata is gone and cannot be redefined: %v", name, err)
	}
	cp.Free()
	j.Log.Infof("checkpoint %s redefined from the bitmaps in the disk images", name)
	return true, ""
}

// liveBackup takes a push-mode backup: full (FULL mode, chain start, or CBT lost) or an
// increment from checkpoint PID, creating checkpoint BID atomically with the backup point.
func (a *Adapter) liveBackup(ctx context.Context, j *storage.Job) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	all, err := d.disks()
	if err != nil {
		return err
	}
	targets := map[int]domDisk{}
	for _, disk := range j.Disks {
		var found *domDisk
		for i := range all {
			if all[i].Target == disk.Target {
				found = &all[i]
			}
		}
		if found == nil {
			return fmt.Errorf("disk %d (target %s) is not attached to domain %s", disk.ID, disk.Target, j.DeployID)
		}
		want, _ := filepath.EvalSymlinks(disk.Path)
		got, _ := filepath.EvalSymlinks(found.Source)
		if want != "" && got != "" && want != got {
			return fmt.Errorf("disk %d: domain %s uses %s on %s, not %s: the VM does not run on its original chain", disk.ID, j.DeployID, found.Source, disk.Target, disk.Path)
		}
		targets[disk.ID] = *found
	}
	if err := d.abortBackupJob(); err != nil {
		return err
	}

	incremental := ""
	if cbt(j) {
		if j.PID >= 0 {
			// A failed try of this BID left its checkpoint: drop it (libvirt merges it into PID).
			if err := d.deleteCheckpoint(anchorName(j.VMID, j.BID)); err != nil {
				return err
			}
			if ok, why := d.parentUsable(j, targets); ok {
				incremental = anchorName(j.VMID, j.PID)
			} else {
				j.Log.Warnf("CBT lost for VM %d (%s): taking a full backup inside the chain as increment %d", j.VMID, why, j.BID)
			}
		}
		if incremental == "" {
			if err := a.dropAllAnchors(d, j, targets); err != nil {
				return err
			}
		}
	}

	var bx strings.Builder
	bx.WriteString("<domainbackup mode='push'>")
	if incremental != "" {
		fmt.Fprintf(&bx, "<incremental>%s</incremental>", incremental)
	}
	bx.WriteString("<disks>")
	selected := map[string]int{}
	for _, disk := range j.Disks {
		selected[disk.Target] = disk.ID
	}
	for _, dd := range all {
		id, ok := selected[dd.Target]
		if !ok {
			fmt.Fprintf(&bx, "<disk name='%s' backup='no'/>", dd.Target)
			continue
		}
		target := filepath.Join(j.BackupDir, fmt.Sprintf("disk.%d.%d", id, j.BID))
		info, err := qemuImgInfo(ctx, dd.Source)
		if err != nil {
			return err
		}
		os.Remove(target)
		if _, err := run(ctx, nil, "qemu-img", "create", "-q", "-f", "qcow2", target, fmt.Sprint(info.VirtualSize)); err != nil {
			return err
		}
		fmt.Fprintf(&bx, "<disk name='%s' backup='yes' type='file'><target file='%s'/><driver type='qcow2'/></disk>", dd.Target, xmlEscape(target))
	}
	bx.WriteString("</disks></domainbackup>")
	cpx := ""
	if cbt(j) {
		cpx = checkpointXMLAll(anchorName(j.VMID, j.BID), all, selected)
	}

	if j.DryRun {
		j.Log.Infof("dry run: backup-begin %s\n%s\n%s", j.DeployID, bx.String(), cpx)
		return nil
	}
	undo, err := freeze(ctx, d, j)
	if err != nil {
		return err
	}
	hold(ctx, j.TmpDir, "frozen")
	if ctx.Err() != nil {
		err = ctx.Err()
	} else {
		err = d.dom.BackupBegin(bx.String(), cpx, libvirt.DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL)
	}
	// The point in time is fixed when the job starts: thaw now, not after the copy.
	if uerr := undo(); uerr != nil {
		err = errors.Join(err, uerr)
	}
	if err != nil {
		d.abortBackupJob()
		return fmt.Errorf("backup-begin on %s: %v", j.DeployID, err)
	}
	kind := "full"
	if incremental != "" {
		kind = "incremental from " + incremental
	}
	j.Log.Infof("live %s backup of VM %d started (disks %v)", kind, j.VMID, diskIDs(j))
	hold(ctx, j.TmpDir, "export")
	return d.waitJob(ctx)
}

func checkpointXMLAll(name string, all []domDisk, selected map[string]int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<domaincheckpoint><name>%s</name><disks>", name)
	for _, dd := range all {
		if _, ok := selected[dd.Target]; ok {
			fmt.Fprintf(&b, "<disk name='%s' checkpoint='bitmap'/>", dd.Target)
		} else {
			fmt.Fprintf(&b, "<disk name='%s' checkpoint='no'/>", dd.Target)
		}
	}
	b.WriteString("</disks></domaincheckpoint>")
	return b.String()
}

func diskIDs(j *storage.Job) []int {
	var ids []int
	for _, d := range j.Disks {
		ids = append(ids, d.ID)
	}
	return ids
}

func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
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

// dropAllAnchors removes every checkpoint of this VM and its bitmaps (also stale ones libvirt
// does not know), before a chain (re)starts.
func (a *Adapter) dropAllAnchors(d *domain, j *storage.Job, targets map[int]domDisk) error {
	ids, err := d.checkpoints(j.VMID)
	if err != nil {
		return err
	}
	for _, n := range ids {
		if err := d.deleteCheckpoint(anchorName(j.VMID, n)); err != nil {
			return err
		}
	}
	for _, disk := range j.Disks {
		node, err := d.formatNode(targets[disk.ID].Source)
		if err != nil {
			return err
		}
		for _, b := range node.Bitmaps {
			if _, ok := anchorID(j.VMID, b.Name); ok {
				if err := d.qmp("block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": b.Name}, nil); err != nil {
					return fmt.Errorf("cannot remove stale bitmap %s of disk %d: %v", b.Name, disk.ID, err)
				}
			}
		}
	}
	return nil
}

// liveAnchors applies keepAnchors to the checkpoints of the running domain.
func (a *Adapter) liveAnchors(ctx context.Context, j *storage.Job) error {
	d, err := openDomain(j.DeployID)
	if err != nil {
		return err
	}
	defer d.close()
	ids, err := d.checkpoints(j.VMID)
	if err != nil {
		return err
	}
	keep := keepAnchors(j)
	var errs []error
	for _, n := range ids { // oldest first: deleting a root drops its bitmap without merging
		if !keep(n) {
			errs = append(errs, d.deleteCheckpoint(anchorName(j.VMID, n)))
		}
	}
	return errors.Join(errs...)
}

// repairLinks makes disk.<id> designate the layer the running VM writes to, when an earlier run
// was killed while the link pointed elsewhere (SNAPSHOT mode moves it): a restart must find
// every write.
func repairLinks(d *domain, j *storage.Job) error {
	all, err := d.disks()
	if err != nil {
		return err
	}
	for _, disk := range j.Disks {
		l, err := readLayout(disk)
		if err != nil || l.top < 0 {
			continue
		}
		for _, dd := range all {
			if dd.Target != disk.Target {
				continue
			}
			active, err1 := filepath.EvalSymlinks(dd.Source)
			linked, err2 := filepath.EvalSymlinks(disk.Path)
			if err1 != nil || err2 != nil || active == linked || filepath.Dir(active) != filepath.Clean(l.dir) {
				continue
			}
			n, err := strconv.Atoi(filepath.Base(active))
			if err != nil {
				continue
			}
			j.Log.Warnf("disk %d: link pointed at %s while the VM writes to %s: repaired", disk.ID, linked, active)
			if err := l.relink(n); err != nil {
				return err
			}
		}
	}
	return nil
}
