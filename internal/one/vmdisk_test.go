package one

import (
	"testing"
)

func parseVM(t *testing.T, xml string) *VM {
	t.Helper()
	m, err := ParseMessage([]byte(xml))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := m.VM()
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestBackupConfig(t *testing.T) {
	vm := parseVM(t, `<VM><ID>3</ID><BACKUPS><BACKUP_CONFIG><MODE>increment</MODE><LAST_INCREMENT_ID>4</LAST_INCREMENT_ID>
<INCREMENT_MODE>snapshot</INCREMENT_MODE><FS_FREEZE>agent</FS_FREEZE><INTERACTIVE>yes</INTERACTIVE><LAST_DATASTORE_ID>101</LAST_DATASTORE_ID>
</BACKUP_CONFIG></BACKUPS></VM>`)
	c, err := vm.BackupConfig()
	if err != nil {
		t.Fatal(err)
	}
	want := BackupConfig{Mode: "INCREMENT", LastIncrementID: 4, IncrementMode: "snapshot", FSFreeze: "AGENT", Interactive: true, LastDatastoreID: 101}
	if c != want || !c.Incremental() {
		t.Errorf("got %+v, want %+v", c, want)
	}
	// Defaults: a new chain, no freeze (an unknown FS_FREEZE reads as NONE, as oned does).
	c, err = parseVM(t, `<VM><ID>3</ID><BACKUPS><BACKUP_CONFIG><FS_FREEZE>bogus</FS_FREEZE></BACKUP_CONFIG></BACKUPS></VM>`).BackupConfig()
	if err != nil || c.LastIncrementID != -1 || c.FSFreeze != "NONE" || c.Interactive || c.LastDatastoreID != -1 || c.Incremental() {
		t.Errorf("defaults: %+v %v", c, err)
	}
	for _, bad := range []string{"x", "-2", "1.5"} {
		if _, err := parseVM(t, `<VM><ID>3</ID><BACKUPS><BACKUP_CONFIG><LAST_INCREMENT_ID>`+bad+`</LAST_INCREMENT_ID></BACKUP_CONFIG></BACKUPS></VM>`).BackupConfig(); err == nil {
			t.Errorf("LAST_INCREMENT_ID %q accepted", bad)
		}
	}
}

func TestDisksAndIdentity(t *testing.T) {
	vm := parseVM(t, `<VM><ID>9</ID><DEPLOY_ID>one-9</DEPLOY_ID><LCM_STATE>69</LCM_STATE><TEMPLATE>
<DISK><DISK_ID>0</DISK_ID><TARGET>vda</TARGET><TYPE>RBD</TYPE><SOURCE>one/one-7</SOURCE><CLONE>YES</CLONE><FORMAT>RAW</FORMAT>
 <TM_MAD>ceph</TM_MAD><POOL_NAME>one</POOL_NAME><CEPH_USER>libvirt</CEPH_USER><CEPH_CONF>/etc/ceph/c.conf</CEPH_CONF><CEPH_KEY>/k</CEPH_KEY><IMAGE_ID>7</IMAGE_ID><SIZE>2048</SIZE></DISK>
<DISK><DISK_ID>1</DISK_ID><TARGET>vdb</TARGET><TYPE>RBD</TYPE><SOURCE>one/one-8</SOURCE><PERSISTENT>YES</PERSISTENT><TM_MAD>ceph</TM_MAD></DISK>
<DISK><DISK_ID>2</DISK_ID><TARGET>vdc</TARGET><TYPE>fs</TYPE><DISK_TYPE>rbd</DISK_TYPE><POOL_NAME>rbdpool</POOL_NAME><DRIVER>raw</DRIVER></DISK>
</TEMPLATE><HISTORY_RECORDS><HISTORY><VM_MAD>kvm</VM_MAD></HISTORY><HISTORY><VM_MAD>LXC</VM_MAD><DS_ID>0</DS_ID></HISTORY></HISTORY_RECORDS></VM>`)
	if vm.DeployID() != "one-9" || !vm.Live() || vm.Hypervisor() != "lxc" || vm.History("DS_ID") != "0" {
		t.Errorf("identity: %q live=%v %q", vm.DeployID(), vm.Live(), vm.Hypervisor())
	}
	disks, err := vm.Disks()
	if err != nil || len(disks) != 3 {
		t.Fatalf("%v %v", disks, err)
	}
	d := disks[0]
	if d.Format != "raw" || d.SizeMiB != 2048 || d.ImageID != 7 || d.DatastoreID != -1 || d.File("/v/9") != "/v/9/disk.0" {
		t.Errorf("disk 0: %+v", d)
	}
	if disks[2].Format != "raw" || !disks[2].Volatile() || disks[2].ImageID != -1 {
		t.Errorf("volatile disk: DRIVER is the format when FORMAT is absent: %+v", disks[2])
	}
	// The three RBD namings (non-persistent copy, persistent, volatile) with the cluster access.
	for i, want := range []string{"one/one-7-9-0", "one/one-8", "rbdpool/one-sys-9-2"} {
		r, err := disks[i].RBD(9)
		if err != nil || r.Name() != want {
			t.Errorf("disk %d: RBD image %q (%v), want %q", i, r.Name(), err, want)
		}
	}
	if r, _ := disks[0].RBD(9); r.CephUser != "libvirt" || r.CephConf != "/etc/ceph/c.conf" || r.CephKey != "/k" {
		t.Errorf("cluster access: %+v", r)
	}
	for _, src := range []string{"noslash", "one/img@snap", "one/-rf", "../x/y"} {
		if _, err := (Disk{ID: 1, Type: "RBD", Source: src}).RBD(9); err == nil {
			t.Errorf("SOURCE %q accepted", src)
		}
	}
}

func TestLVMNaming(t *testing.T) {
	cases := []struct {
		name string
		d    Disk
		tm   string
		want LVMVolume
	}{
		{"fs_lvm_ssh thick", Disk{ID: 1, TMMad: "fs_lvm_ssh"}, "fs_lvm_ssh", LVMVolume{"vg-one-0", "lv-one-9-1", ""}},
		{"fs_lvm_ssh thin", Disk{ID: 1, TMMad: "fs_lvm_ssh", LVMThin: true}, "fs_lvm_ssh", LVMVolume{"vg-one-0", "lv-one-9-1", "lv-one-9-pool"}},
		{"lvm persistent", Disk{ID: 0, TMMad: "lvm", Persistent: true, ImageID: 12, DatastoreID: 105}, "lvm", LVMVolume{"vg-one-105", "img-one-12", "img-one-12-pool"}},
		{"lvm non-persistent", Disk{ID: 2, TMMad: "lvm", ImageID: 12, DatastoreID: 105}, "lvm", LVMVolume{"vg-one-105", "vm-one-9-2", "vm-one-9-pool"}},
		{"lvm volatile", Disk{ID: 3, Type: "FS", DiskType: "BLOCK", ImageID: -1, DatastoreID: -1}, "lvm", LVMVolume{"vg-one-105", "vm-one-9-3", "vm-one-9-pool"}},
	}
	for _, c := range cases {
		v, err := c.d.LVM(9, c.tm, 0, 105)
		if err != nil || v != c.want {
			t.Errorf("%s: %+v %v, want %+v", c.name, v, err, c.want)
		}
	}
	if v, _ := cases[0].d.LVM(9, "fs_lvm_ssh", 0, -1); v.Device() != "/dev/vg-one-0/lv-one-9-1" || v.Name() != "vg-one-0/lv-one-9-1" {
		t.Errorf("device %q name %q", v.Device(), v.Name())
	}
	if _, err := cases[4].d.LVM(9, "lvm", 0, -1); err == nil {
		t.Error("a volatile disk on the lvm driver without an lvm image disk got a volume group")
	}
	if got := FirstLVMDatastore([]Disk{{TMMad: "ceph", DatastoreID: 1}, {TMMad: "lvm", DatastoreID: 105}}); got != 105 {
		t.Errorf("FirstLVMDatastore = %d", got)
	}
}

func TestBackupImagesMB(t *testing.T) {
	pool := `<IMAGE_POOL>
<IMAGE><ID>1</ID><TYPE>6</TYPE><DATASTORE_ID>100</DATASTORE_ID><SIZE>2048</SIZE></IMAGE>
<IMAGE><ID>2</ID><TYPE>6</TYPE><DATASTORE_ID>100</DATASTORE_ID><SIZE>10</SIZE></IMAGE>
<IMAGE><ID>3</ID><TYPE>0</TYPE><DATASTORE_ID>100</DATASTORE_ID><SIZE>5000</SIZE></IMAGE>
<IMAGE><ID>4</ID><TYPE>6</TYPE><DATASTORE_ID>101</DATASTORE_ID><SIZE>7000</SIZE></IMAGE>
</IMAGE_POOL>`
	if got, err := BackupImagesMB([]byte(pool), 100); err != nil || got != 2058 {
		t.Errorf("got %d %v, want 2058", got, err)
	}
	if got, err := BackupImagesMB([]byte("<IMAGE_POOL/>"), 100); err != nil || got != 0 {
		t.Errorf("empty pool: %d %v", got, err)
	}
	for _, bad := range []string{"<IMAGE/>", `<IMAGE_POOL><IMAGE><TYPE>6</TYPE><DATASTORE_ID>100</DATASTORE_ID><SIZE>x</SIZE></IMAGE></IMAGE_POOL>`} {
		if _, err := BackupImagesMB([]byte(bad), 100); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
