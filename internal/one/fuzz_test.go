package one

import (
	"strings"
	"testing"
)

// FuzzVMMessage: whatever oned (or anyone) sends, decoding the VM and every view the host side
// reads either works or fails with an error; it never panics, and an RBD name it accepts holds no
// path or snapshot separator.
func FuzzVMMessage(f *testing.F) {
	f.Add([]byte(`<VM><ID>5</ID><DEPLOY_ID>one-5</DEPLOY_ID><LCM_STATE>69</LCM_STATE><TEMPLATE><DISK><DISK_ID>0</DISK_ID><TYPE>RBD</TYPE><SOURCE>one/one-3</SOURCE><CLONE>YES</CLONE><POOL_NAME>one</POOL_NAME><CEPH_USER>oneadmin</CEPH_USER></DISK><DISK><DISK_ID>1</DISK_ID><TYPE>fs</TYPE><DISK_TYPE>RBD</DISK_TYPE><POOL_NAME>one</POOL_NAME></DISK><TPM><MODEL>tpm-crb</MODEL></TPM></TEMPLATE><BACKUPS><BACKUP_CONFIG><MODE>INCREMENT</MODE><LAST_INCREMENT_ID>2</LAST_INCREMENT_ID><INCREMENTAL_BACKUP_ID>7</INCREMENTAL_BACKUP_ID><LAST_BRIDGE>hv2</LAST_BRIDGE></BACKUP_CONFIG><BACKUP_IDS><ID>3</ID><ID>7</ID></BACKUP_IDS></BACKUPS><HISTORY_RECORDS><HISTORY><DS_ID>0</DS_ID><TM_MAD>ceph</TM_MAD><VM_MAD>kvm</VM_MAD></HISTORY></HISTORY_RECORDS></VM>`))
	f.Add([]byte(`<VM><ID>7</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><TYPE>BLOCK</TYPE><SOURCE>vg/lv-0</SOURCE><LVM_THIN_ENABLE>YES</LVM_THIN_ENABLE></DISK></TEMPLATE></VM>`))
	f.Add([]byte("PFZNPjxJRD4xPC9JRD48L1ZNPg=="))
	f.Add([]byte(`<VM><ID>-1</ID><TEMPLATE><DISK><DISK_ID>x</DISK_ID><SOURCE>../../etc@snap</SOURCE><TYPE>RBD</TYPE></DISK></TEMPLATE></VM>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := ParseMessage(data)
		if err != nil {
			return
		}
		vm, err := msg.VM()
		if err != nil {
			return
		}
		vm.ID()
		vm.BackupConfig()
		vm.Live()
		vm.LastBridge()
		vm.IncrementalBackupID()
		vm.BackupImageIDs()
		disks, err := vm.Disks()
		if err != nil {
			return
		}
		for _, d := range disks {
			d.File("/var/lib/one/datastores/0/5")
			if r, err := d.RBD(5); err == nil {
				if strings.ContainsAny(r.Pool, "/@") || strings.ContainsAny(r.Image, "/@") || r.Pool == "" || r.Image == "" {
					t.Fatalf("accepted RBD image %q", r.Name())
				}
			}
			d.LVM(5, "fs_lvm_ssh", 0, 1)
		}
	})
}
