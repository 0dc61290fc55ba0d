package kvm

// The running domain as libvirt and QEMU see it: its disks and layers, checkpoints, bitmaps,
// backup and block jobs. Documents for libvirt are built with libvirtxml, never by hand.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"onebackup/internal/hostjob"
	"onebackup/internal/hypervisor"
)

// domain is an open libvirt connection with the VM's domain; Close releases both.
type domain struct {
	conn *libvirt.Connect
	dom  *libvirt.Domain
}

func openDomain(deployID string) (*domain, error) {
	conn, err := libvirt.NewConnect(libvirtURI())
	if err != nil {
		return nil, fmt.Errorf("cannot connect to libvirt at %s: %w", libvirtURI(), err)
	}
	dom, err := conn.LookupDomainByUUIDString(deployID)
	if err != nil {
		dom, err = conn.LookupDomainByName(deployID)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("domain %s not found on this host: %w", deployID, err)
	}
	return &domain{conn: conn, dom: dom}, nil
}

// openRunning opens the domain of a live backup; one that is gone (a transient domain whose QEMU
// died) or stopped is hypervisor.ErrNotRunning.
func openRunning(deployID string) (*domain, error) {
	d, err := openDomain(deployID)
	if err != nil {
		var le libvirt.Error
		if errors.As(err, &le) && le.Code == libvirt.ERR_NO_DOMAIN {
			return nil, fmt.Errorf("domain %s: %w", deployID, hypervisor.ErrNotRunning)
		}
		return nil, err
	}
	if active, err := d.dom.IsActive(); err == nil && !active {
		d.Close()
		return nil, fmt.Errorf("domain %s: %w", deployID, hypervisor.ErrNotRunning)
	}
	return d, nil
}

func (d *domain) Close() {
	if d == nil {
		return
	}
	d.dom.Free()
	d.conn.Close()
}

func fileOf(s *libvirtxml.DomainDiskSource) string {
	if s == nil || s.File == nil {
		return ""
	}
	return s.File.File
}

func (d *domain) Disks() ([]hypervisor.DomainDisk, error) {
	desc, err := d.dom.GetXMLDesc(0)
	if err != nil {
		return nil, err
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(desc); err != nil {
		return nil, err
	}
	var out []hypervisor.DomainDisk
	if x.Devices == nil {
		return nil, nil
	}
	for _, dd := range x.Devices.Disks {
		if dd.Device != "" && dd.Device != "disk" || dd.Target == nil {
			continue
		}
		disk := hypervisor.DomainDisk{Target: dd.Target.Dev, Source: fileOf(dd.Source)}
		if dd.Driver != nil {
			disk.Format = dd.Driver.Type
		}
		for b := dd.BackingStore; b != nil; b = b.BackingStore {
			if f := fileOf(b.Source); f != "" {
				disk.Chain = append(disk.Chain, f)
			}
		}
		out = append(out, disk)
	}
	return out, nil
}

func (d *domain) LayersIn(dir string) []string {
	disks, err := d.Disks()
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
		return fmt.Errorf("QMP %s: %w", cmd, err)
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

type blockNode struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	File     string `json:"file"`
	Bitmaps  []struct {
		Name         string `json:"name"`
		Recording    bool   `json:"recording"`
		Inconsistent bool   `json:"inconsistent"`
	} `json:"dirty-bitmaps"`
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

func (d *domain) Bitmaps(file string) ([]hypervisor.Bitmap, error) {
	node, err := d.formatNode(file)
	if err != nil {
		return nil, err
	}
	var out []hypervisor.Bitmap
	for _, b := range node.Bitmaps {
		out = append(out, hypervisor.Bitmap{Name: b.Name, Recording: b.Recording, Inconsistent: b.Inconsistent})
	}
	return out, nil
}

func (d *domain) RemoveBitmap(file, name string) error {
	node, err := d.formatNode(file)
	if err != nil {
		return err
	}
	return d.qmp("block-dirty-bitmap-remove", map[string]any{"node": node.NodeName, "name": name}, nil)
}

func (d *domain) Checkpoints() ([]string, error) {
	cps, err := d.dom.ListAllCheckpoints(0)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, cp := range cps {
		if name, err := cp.GetName(); err == nil {
			names = append(names, name)
		}
		cp.Free()
	}
	return names, nil
}

func (d *domain) HasCheckpoint(name string) bool {
	cp, err := d.dom.CheckpointLookupByName(name, 0)
	if err != nil {
		return false
	}
	cp.Free()
	return true
}

// checkpointXML is a checkpoint covering the selected targets with a bitmap each and leaving
// every other disk out (libvirt would otherwise add them).
func (d *domain) checkpointXML(name string, selected map[string]bool, created time.Time) (string, error) {
	all, err := d.Disks()
	if err != nil {
		return "", err
	}
	cp := libvirtxml.DomainCheckpoint{Name: name, Disks: &libvirtxml.DomainCheckpointDisks{}}
	if !created.IsZero() {
		cp.CreationTime = fmt.Sprint(created.Unix())
	}
	for _, dd := range all {
		how := "no"
		if selected[dd.Target] {
			how = "bitmap"
		}
		cp.Disks.Disks = append(cp.Disks.Disks, libvirtxml.DomainCheckpointDisk{Name: dd.Target, Checkpoint: how})
	}
	return cp.Marshal()
}

func (d *domain) RedefineCheckpoint(name string, selected map[string]bool) error {
	x, err := d.checkpointXML(name, selected, time.Now())
	if err != nil {
		return err
	}
	cp, err := d.dom.CreateCheckpointXML(x, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE)
	if err != nil {
		return err
	}
	cp.Free()
	return nil
}

func (d *domain) DeleteCheckpoint(name string) error {
	cp, err := d.dom.CheckpointLookupByName(name, 0)
	if err != nil {
		return nil // already gone
	}
	defer cp.Free()
	if err := cp.Delete(0); err != nil {
		// The bitmaps are gone or broken: drop the metadata at least.
		if err2 := cp.Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY); err2 != nil {
			return fmt.Errorf("cannot delete checkpoint %s: %w", name, err)
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

func (d *domain) AbortBackupJob() error {
	if !d.activeBackupJob() {
		return nil
	}
	if err := d.dom.AbortJob(); err != nil && d.activeBackupJob() {
		return fmt.Errorf("cannot abort the running backup job: %w", err)
	}
	for i := 0; i < 300 && d.activeBackupJob(); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if d.activeBackupJob() {
		return errors.New("the aborted backup job does not end")
	}
	return nil
}

func (d *domain) BeginBackup(b hypervisor.PushBackup) error {
	all, err := d.Disks()
	if err != nil {
		return err
	}
	bx := libvirtxml.DomainBackup{Incremental: b.Since, Push: &libvirtxml.DomainBackupPush{Disks: &libvirtxml.DomainBackupPushDisks{}}}
	selected := map[string]bool{}
	for _, dd := range all {
		out, ok := b.Outputs[dd.Target]
		if !ok {
			bx.Push.Disks.Disks = append(bx.Push.Disks.Disks, libvirtxml.DomainBackupPushDisk{Name: dd.Target, Backup: "no"})
			continue
		}
		selected[dd.Target] = true
		bx.Push.Disks.Disks = append(bx.Push.Disks.Disks, libvirtxml.DomainBackupPushDisk{
			Name: dd.Target, Backup: "yes",
			Driver: &libvirtxml.DomainBackupDiskDriver{Type: "qcow2"},
			Target: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: out}},
		})
	}
	bdoc, err := bx.Marshal()
	if err != nil {
		return err
	}
	cdoc := ""
	if b.Checkpoint != "" {
		if cdoc, err = d.checkpointXML(b.Checkpoint, selected, time.Time{}); err != nil {
			return err
		}
	}
	if err := d.dom.BackupBegin(bdoc, cdoc, libvirt.DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL); err != nil {
		d.AbortBackupJob()
		return err
	}
	return nil
}

func (d *domain) WaitBackup(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := d.dom.GetJobInfo()
		if err != nil {
			if active, aerr := d.dom.IsActive(); aerr != nil || !active {
				// QEMU ended under the job (killed, crashed, the guest destroyed).
				return fmt.Errorf("the VM's QEMU process ended during the live backup, which is therefore incomplete: %w", hypervisor.ErrNotRunning)
			}
			return fmt.Errorf("backup job state: %w", err)
		}
		if info.Type == libvirt.DOMAIN_JOB_NONE {
			break
		}
		select {
		case <-ctx.Done():
			d.AbortBackupJob()
			return ctx.Err()
		case <-tick.C:
		}
	}
	st, err := d.dom.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED)
	if err != nil {
		return fmt.Errorf("backup job result: %w", err)
	}
	if st.Type != libvirt.DOMAIN_JOB_COMPLETED {
		return fmt.Errorf("the backup job did not complete (libvirt job type %d)", st.Type)
	}
	return nil
}

func (d *domain) Snapshot(layers map[string]string) error {
	all, err := d.Disks()
	if err != nil {
		return err
	}
	sx := libvirtxml.DomainSnapshot{Disks: &libvirtxml.DomainSnapshotDisks{}}
	for _, dd := range all {
		f, ok := layers[dd.Target]
		if !ok {
			sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: dd.Target, Snapshot: "no"})
			continue
		}
		sx.Disks.Disks = append(sx.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name: dd.Target, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: f}},
		})
	}
	doc, err := sx.Marshal()
	if err != nil {
		return err
	}
	snap, err := d.dom.CreateSnapshotXML(doc, libvirt.DOMAIN_SNAPSHOT_CREATE_DISK_ONLY|libvirt.DOMAIN_SNAPSHOT_CREATE_ATOMIC|
		libvirt.DOMAIN_SNAPSHOT_CREATE_NO_METADATA|libvirt.DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)
	if snap != nil {
		snap.Free()
	}
	return err
}

func (d *domain) CommitActive(ctx context.Context, target, base string) error {
	if err := d.dom.BlockCommit(target, base, "", 0, libvirt.DOMAIN_BLOCK_COMMIT_ACTIVE); err != nil {
		return fmt.Errorf("block commit of %s: %w", target, err)
	}
	if err := d.waitBlockJob(ctx, target, true); err != nil {
		return err
	}
	if err := d.dom.BlockJobAbort(target, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
		return fmt.Errorf("pivot of %s: %w", target, err)
	}
	return d.waitBlockJob(ctx, target, false)
}

func (d *domain) Commit(ctx context.Context, target, base, top string) error {
	if err := d.dom.BlockCommit(target, base, top, 0, 0); err != nil {
		return err
	}
	return d.waitBlockJob(ctx, target, false)
}

func (d *domain) CopyTo(ctx context.Context, target, dst string) error {
	disk := libvirtxml.DomainDisk{
		Driver: &libvirtxml.DomainDiskDriver{Type: "qcow2"},
		Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: dst}},
	}
	doc, err := disk.Marshal()
	if err != nil {
		return err
	}
	if err := d.dom.BlockCopy(target, doc, &libvirt.DomainBlockCopyParameters{}, libvirt.DOMAIN_BLOCK_COPY_REUSE_EXT|libvirt.DOMAIN_BLOCK_COPY_TRANSIENT_JOB); err != nil {
		return fmt.Errorf("block copy of %s into %s: %w", target, dst, err)
	}
	if err := d.waitBlockJob(ctx, target, true); err != nil {
		d.dom.BlockJobAbort(target, 0)
		return err
	}
	if err := d.dom.BlockJobAbort(target, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
		d.dom.BlockJobAbort(target, 0)
		return fmt.Errorf("pivot of %s to %s: %w", target, dst, err)
	}
	return d.waitBlockJob(ctx, target, false)
}

// waitBlockJob waits until the disk's block job is ready (active commit, copy) or gone.
func (d *domain) waitBlockJob(ctx context.Context, target string, ready bool) error {
	for i := 0; ; i++ {
		info, err := d.dom.GetBlockJobInfo(target, 0)
		if err != nil {
			return err
		}
		gone := info.Type == 0 && info.End == 0
		if gone && ready {
			return errors.New("block job of " + target + " ended before it was ready")
		}
		if gone || ready && info.End > 0 && info.Cur == info.End {
			if !gone && ready {
				time.Sleep(50 * time.Millisecond) // let the job report READY
			}
			return nil
		}
		if i > 6000 {
			return errors.New("block job of " + target + " does not finish")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ChainName: a domain started on disk.<id> knows the first layer by the link's path, whatever
// the link points at now. The layer is found by its position in the image's real backing chain.
func (d *domain) ChainName(target, file string) string {
	want, err := filepath.EvalSymlinks(file)
	if err != nil {
		return file
	}
	all, err := d.Disks()
	if err != nil {
		return file
	}
	for _, dd := range all {
		if dd.Target != target {
			continue
		}
		names := append([]string{dd.Source}, dd.Chain...)
		out, err := hostjob.Run(context.Background(), nil, "qemu-img", "info", "--backing-chain", "--output=json", "--force-share", dd.Source)
		if err != nil {
			return file
		}
		var chain []struct {
			Filename string `json:"filename"`
		}
		if json.Unmarshal(out, &chain) != nil {
			return file
		}
		for i, c := range chain {
			if real, err := filepath.EvalSymlinks(c.Filename); err == nil && real == want && i < len(names) {
				return names[i]
			}
		}
	}
	return file
}

func (d *domain) SetBacking(file, backing string) error {
	node, err := d.formatNode(file)
	if err != nil {
		return err
	}
	return d.qmp("change-backing-file", map[string]any{"device": node.NodeName, "image-node-name": node.NodeName, "backing-file": backing}, nil)
}
