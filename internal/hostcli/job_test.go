package hostcli

import (
	"context"
	"strings"
	"testing"

	"onebackup/internal/matrix"
	_ "onebackup/internal/storage/file" // the side that finds file disks on the host
)

type nopLog struct{}

func (nopLog) Infof(string, ...any) {}
func (nopLog) Warnf(string, ...any) {}

const vmTemplate = `<VM><ID>42</ID><DEPLOY_ID>0b5e0000-0000-4000-8000-000000000042</DEPLOY_ID><LCM_STATE>69</LCM_STATE>
<TEMPLATE><DISK><DISK_ID>0</DISK_ID><TARGET>vda</TARGET><FORMAT>qcow2</FORMAT><SIZE>2048</SIZE></DISK>
<DISK><DISK_ID>2</DISK_ID><TARGET>vdc</TARGET><FORMAT>raw</FORMAT><SIZE>64</SIZE></DISK></TEMPLATE>
<BACKUPS><BACKUP_CONFIG><MODE>%MODE%</MODE><LAST_INCREMENT_ID>3</LAST_INCREMENT_ID><INCREMENT_MODE>snapshot</INCREMENT_MODE><FS_FREEZE>suspend</FS_FREEZE></BACKUP_CONFIG></BACKUPS>
<HISTORY_RECORDS><HISTORY><DS_ID>0</DS_ID><TM_MAD>ssh</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY><HISTORY><DS_ID>100</DS_ID><TM_MAD>qcow2</TM_MAD><VM_MAD>%VMMAD%</VM_MAD></HISTORY></HISTORY_RECORDS></VM>`

func job(t *testing.T, mode, vmMad, disks string, o options) (*options, error) {
	t.Helper()
	doc := strings.NewReplacer("%MODE%", mode, "%VMMAD%", vmMad).Replace(vmTemplate)
	vm, err := parseVMXML([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	o.disks, o.dryRun = disks, true
	j, err := o.buildJob(context.Background(), vm, nopLog{})
	if err != nil {
		return nil, err
	}
	if j.VMDir != "/var/lib/one/datastores/100/42" || j.TmpDir != j.VMDir+"/tmp" || j.BackupDir != j.VMDir+"/backup" {
		t.Errorf("paths from the last history record: %+v", j)
	}
	return &o, nil
}

func TestBuildJobIncrement(t *testing.T) {
	doc := strings.NewReplacer("%MODE%", "INCREMENT", "%VMMAD%", "kvm").Replace(vmTemplate)
	vm, _ := parseVMXML([]byte(doc))
	o := &options{disks: "0", dryRun: true}
	j, err := o.buildJob(context.Background(), vm, nopLog{})
	if err != nil {
		t.Fatal(err)
	}
	if j.BID != 4 || j.PID != 3 || !j.Decision.Live || j.Decision.IncrementMode != matrix.Snapshot || j.FSFreeze != "SUSPEND" {
		t.Errorf("job %+v decision %+v", j, j.Decision)
	}
	if len(j.Disks) != 1 || j.Disks[0].Target != "vda" || j.Disks[0].Path != "/var/lib/one/datastores/100/42/disk.0" {
		t.Errorf("disks %+v", j.Disks)
	}
	// --poweroff wins over LCM_STATE; BACKUP_RESULT=FAILURE is read.
	vm2, _ := parseVMXML([]byte(strings.Replace(doc, "</VM>", "<BACKUP_RESULT>FAILURE</BACKUP_RESULT></VM>", 1)))
	o = &options{disks: "0", dryRun: true, poweroff: true}
	j, err = o.buildJob(context.Background(), vm2, nopLog{})
	if err != nil || j.Decision.Live || j.Success {
		t.Errorf("poweroff/failure: %+v %v", j, err)
	}
}

func TestBuildJobMatrixErrors(t *testing.T) {
	if _, err := job(t, "INCREMENT", "kvm", "0:2", options{}); err == nil || !strings.Contains(err.Error(), "raw disks support full backups only") {
		t.Errorf("raw incremental: %v", err)
	}
	if _, err := job(t, "FULL", "kvm", "0:2", options{}); err != nil {
		t.Errorf("raw full: %v", err)
	}
	if _, err := job(t, "FULL", "lxc", "0", options{}); err == nil || !strings.HasPrefix(err.Error(), "LXC file qcow2") {
		t.Errorf("LXC live: %v", err)
	}
	if _, err := job(t, "FULL", "kvm", "0:5", options{}); err == nil || !strings.Contains(err.Error(), "disk 5") {
		t.Errorf("unknown disk: %v", err)
	}
	if _, err := job(t, "FULL", "kvm", "", options{}); err == nil {
		t.Error("empty disk list accepted")
	}
	if _, err := job(t, "FULL", "kvm", "0", options{tmMad: "lvm"}); err != nil {
		t.Errorf("LVM thin full: %v", err)
	}
	if _, err := job(t, "INCREMENT", "kvm", "0", options{tmMad: "lvm"}); err == nil || !strings.Contains(err.Error(), "LVM_THIN_INCREMENTS=YES") {
		t.Errorf("LVM thin increment without the datastore's opt-in: %v", err)
	}
	if _, err := job(t, "INCREMENT", "kvm", "0", options{tmMad: "lvm", optIns: []string{"LVM_THIN_INCREMENTS"}}); err != nil {
		t.Errorf("LVM thin increment with the opt-in: %v", err)
	}
	if _, err := job(t, "FULL", "kvm", "0", options{tmMad: "ceph"}); err != nil {
		t.Errorf("ceph row: %v", err)
	}
	doc := strings.NewReplacer("%MODE%", "FULL", "%VMMAD%", "kvm").Replace(vmTemplate)
	vm, _ := parseVMXML([]byte(strings.Replace(doc, "<FS_FREEZE>", "<INTERACTIVE>yes</INTERACTIVE><FS_FREEZE>", 1)))
	o := &options{disks: "0", dryRun: true}
	if _, err := o.buildJob(context.Background(), vm, nopLog{}); err == nil || !strings.Contains(err.Error(), "INTERACTIVE=YES") {
		t.Errorf("interactive backup: %v", err)
	}
	if _, err := job(t, "FULL", "kvm", "0", options{tmMad: "dev"}); err == nil {
		t.Error("dev TM accepted")
	}
}

func TestBase64Lines(t *testing.T) {
	out := base64Lines([]byte(strings.Repeat("x", 100)))
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	for i, l := range lines {
		if len(l) > 60 || (i < len(lines)-1 && len(l) != 60) {
			t.Errorf("line %d has %d chars", i, len(l))
		}
	}
}
