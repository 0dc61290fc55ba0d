package one

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// This file is the host side's reading of a VM: its backup settings and its disks with
// everything each storage needs to find them (a file in the VM directory, an RBD image, an LV).
// It is the only place that reads a VM's DISK elements, so the KVM and LXC hosts, the file,
// Ceph and LVM storages and the frontend's TM actions all agree on what a disk is.

// BackupConfig is VM/BACKUPS/BACKUP_CONFIG as the host side uses it.
type BackupConfig struct {
	Mode            string // FULL | INCREMENT (upper-cased)
	LastIncrementID int    // -1: start a new chain
	IncrementMode   string // as written; matrix.NormalizeIncrementMode decides
	FSFreeze        string // NONE | AGENT | SUSPEND (anything else reads as NONE, as oned)
	Interactive     bool   // INTERACTIVE=YES (OneBEX)
	LastDatastoreID int    // backup datastore of this run, -1 when absent
}

// Incremental is MODE=INCREMENT.
func (c BackupConfig) Incremental() bool { return c.Mode == "INCREMENT" }

// BackupConfig reads and validates VM/BACKUPS/BACKUP_CONFIG.
func (v *VM) BackupConfig() (BackupConfig, error) {
	c := BackupConfig{
		Mode:            strings.ToUpper(v.text("BACKUPS/BACKUP_CONFIG/MODE")),
		LastIncrementID: -1,
		IncrementMode:   v.text("BACKUPS/BACKUP_CONFIG/INCREMENT_MODE"),
		FSFreeze:        strings.ToUpper(v.text("BACKUPS/BACKUP_CONFIG/FS_FREEZE")),
		Interactive:     strings.EqualFold(v.text("BACKUPS/BACKUP_CONFIG/INTERACTIVE"), "yes"),
		LastDatastoreID: -1,
	}
	if s := v.text("BACKUPS/BACKUP_CONFIG/LAST_INCREMENT_ID"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < -1 {
			return c, fmt.Errorf("VM backup configuration has an invalid LAST_INCREMENT_ID %q", s)
		}
		c.LastIncrementID = n
	}
	if c.FSFreeze != "AGENT" && c.FSFreeze != "SUSPEND" {
		c.FSFreeze = "NONE"
	}
	if s := v.text("BACKUPS/BACKUP_CONFIG/LAST_DATASTORE_ID"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			c.LastDatastoreID = n
		}
	}
	return c, nil
}

// DeployID is VM/DEPLOY_ID (libvirt domain UUID or name; "one-<vid>" for LXC).
func (v *VM) DeployID() string { return v.text("DEPLOY_ID") }

// LCMState is VM/LCM_STATE (69 = BACKUP, i.e. live; 70 = BACKUP_POWEROFF).
func (v *VM) LCMState() string { return v.text("LCM_STATE") }

// Live says whether oned asked for a live backup (LCM state BACKUP).
func (v *VM) Live() bool { return v.LCMState() == "69" }

// BackupFailed is VM/BACKUP_RESULT=FAILURE, added by the VMM driver for postbackup.
func (v *VM) BackupFailed() bool { return strings.EqualFold(v.text("BACKUP_RESULT"), "FAILURE") }

// TPMModel is VM/TEMPLATE/TPM/MODEL ("" without a vTPM).
func (v *VM) TPMModel() string { return v.text("TEMPLATE/TPM/MODEL") }

// History is a field of the VM's last history record (its current host and system datastore).
func (v *VM) History(name string) string {
	h := v.e.FindElements("./HISTORY_RECORDS/HISTORY")
	if len(h) == 0 {
		return ""
	}
	return node{h[len(h)-1]}.text(name)
}

// Hypervisor is VM_MAD of the last history record, lower-cased ("kvm", "lxc").
func (v *VM) Hypervisor() string { return strings.ToLower(v.History("VM_MAD")) }

// BackupImageIDs are VM/BACKUPS/BACKUP_IDS/ID in document order (the first is the oldest image).
func (v *VM) BackupImageIDs() []int {
	var ids []int
	for _, s := range v.texts("BACKUPS/BACKUP_IDS/ID") {
		if n, err := strconv.Atoi(s); err == nil && n >= 0 {
			ids = append(ids, n)
		}
	}
	return ids
}

// IncrementalBackupID is BACKUP_CONFIG/INCREMENTAL_BACKUP_ID, the image of the chain being
// continued (-1 when there is none).
func (v *VM) IncrementalBackupID() int {
	n, err := strconv.Atoi(v.text("BACKUPS/BACKUP_CONFIG/INCREMENTAL_BACKUP_ID"))
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// Disk is one DISK of a VM as oned describes it. Which fields matter depends on the storage:
// a file disk is found by its id in the VM directory, an RBD image by pool, source and the
// naming rules of RBD, an LV by volume group and name.
type Disk struct {
	ID       int
	Target   string // device name in the guest (vda); LXC has one too
	Type     string // TYPE, upper-cased: FILE, BLOCK, RBD, FS (volatile), SWAP, CDROM…
	DiskType string // DISK_TYPE, upper-cased (a volatile disk's backing kind)
	Format   string // FORMAT (else DRIVER), lower-cased: qcow2 | raw
	TMMad    string // the image datastore's TM_MAD, lower-cased
	Source   string // SOURCE (an RBD disk's pool/image)
	SizeMiB  int64
	// Persistent is PERSISTENT=YES; Clone is CLONE=YES (a non-persistent copy for this VM).
	Persistent, Clone bool
	ImageID           int // -1 for volatile disks
	DatastoreID       int // image datastore, -1 when absent
	// Ceph
	PoolName                    string
	CephUser, CephConf, CephKey string
	// LVM
	LVMThin bool // LVM_THIN_ENABLE=YES
}

// Volatile is a disk without an image (TYPE fs or swap).
func (d Disk) Volatile() bool { return d.Type == "FS" || d.Type == "SWAP" }

// File is where a file disk is on the host: <VM dir>/disk.<id> (a file, or a link to its
// snapshot layers).
func (d Disk) File(vmDir string) string {
	return filepath.Join(vmDir, "disk."+strconv.Itoa(d.ID))
}

// RBDImage identifies an RBD image and how to reach the cluster.
type RBDImage struct {
	Pool, Image                 string
	CephUser, CephConf, CephKey string
}

// Name is pool/image.
func (r RBDImage) Name() string { return r.Pool + "/" + r.Image }

// rbdName is what Ceph accepts as a pool or image name here: no path separators, no '@' (the
// snapshot separator), nothing a command line could read as an option.
var rbdName = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_.+-]*$`)

// RBD is the image a Ceph disk of VM vid lives in: volatile disks are one-sys-<vid>-<id> in
// POOL_NAME, non-persistent ones a copy <SOURCE>-<vid>-<id>, persistent ones SOURCE itself.
func (d Disk) RBD(vid int) (RBDImage, error) {
	r := RBDImage{CephUser: d.CephUser, CephConf: d.CephConf, CephKey: d.CephKey}
	switch {
	case d.Volatile():
		r.Pool, r.Image = d.PoolName, fmt.Sprintf("one-sys-%d-%d", vid, d.ID)
	default:
		pool, image, ok := strings.Cut(d.Source, "/")
		if !ok {
			return r, fmt.Errorf("disk %d: SOURCE %q is not pool/image", d.ID, d.Source)
		}
		r.Pool, r.Image = pool, image
		if d.Clone {
			r.Image = fmt.Sprintf("%s-%d-%d", image, vid, d.ID)
		}
	}
	if !rbdName.MatchString(r.Pool) || !rbdName.MatchString(r.Image) {
		return r, fmt.Errorf("disk %d: %q is not a valid RBD pool/image name", d.ID, r.Name())
	}
	return r, nil
}

// LVMVolume identifies a logical volume and its thin pool.
type LVMVolume struct {
	VG, LV, ThinPool string // ThinPool is "" for thick LVs
}

// Name is vg/lv; Device is /dev/vg/lv.
func (l LVMVolume) Name() string   { return l.VG + "/" + l.LV }
func (l LVMVolume) Device() string { return "/dev/" + l.VG + "/" + l.LV }

// LVM is the volume an LVM disk of VM vid lives in. systemTM and sysDS are the system
// datastore's driver and id (fs_lvm_ssh keeps the VM's LVs there); lvmDS is the DATASTORE_ID of
// the VM's first disk on the thin-only "lvm" driver, where that driver also puts volatile disks.
func (d Disk) LVM(vid int, systemTM string, sysDS, lvmDS int) (LVMVolume, error) {
	var v LVMVolume
	switch {
	case d.TMMad == "lvm" || d.Volatile() && strings.EqualFold(systemTM, "lvm"):
		ds := d.DatastoreID
		if d.Volatile() {
			ds = lvmDS
		}
		if ds < 0 {
			return v, fmt.Errorf("disk %d: no DATASTORE_ID for its LVM volume group", d.ID)
		}
		v.VG = fmt.Sprintf("vg-one-%d", ds)
		if d.Persistent && !d.Volatile() {
			v.LV = fmt.Sprintf("img-one-%d", d.ImageID)
		} else {
			v.LV = fmt.Sprintf("vm-one-%d-%d", vid, d.ID)
		}
		if d.Persistent && !d.Volatile() {
			v.ThinPool = v.LV + "-pool"
		} else {
			v.ThinPool = fmt.Sprintf("vm-one-%d-pool", vid)
		}
	default:
		v.VG = fmt.Sprintf("vg-one-%d", sysDS)
		v.LV = fmt.Sprintf("lv-one-%d-%d", vid, d.ID)
		if d.LVMThin {
			v.ThinPool = fmt.Sprintf("lv-one-%d-pool", vid)
		}
	}
	return v, nil
}

// Disks are VM/TEMPLATE/DISK in document order.
func (v *VM) Disks() ([]Disk, error) {
	var out []Disk
	for _, e := range v.e.FindElements("./TEMPLATE/DISK") {
		n := node{e}
		id, err := strconv.Atoi(n.text("DISK_ID"))
		if err != nil || id < 0 {
			return nil, fmt.Errorf("VM has a DISK with an invalid DISK_ID %q", n.text("DISK_ID"))
		}
		d := Disk{
			ID:          id,
			Target:      n.text("TARGET"),
			Type:        strings.ToUpper(n.text("TYPE")),
			DiskType:    strings.ToUpper(n.text("DISK_TYPE")),
			Format:      strings.ToLower(n.text("FORMAT")),
			TMMad:       strings.ToLower(n.text("TM_MAD")),
			Source:      n.text("SOURCE"),
			Persistent:  strings.EqualFold(n.text("PERSISTENT"), "yes"),
			Clone:       strings.EqualFold(n.text("CLONE"), "yes"),
			ImageID:     intOr(n.text("IMAGE_ID"), -1),
			DatastoreID: intOr(n.text("DATASTORE_ID"), -1),
			PoolName:    n.text("POOL_NAME"),
			CephUser:    n.text("CEPH_USER"),
			CephConf:    n.text("CEPH_CONF"),
			CephKey:     n.text("CEPH_KEY"),
			LVMThin:     strings.EqualFold(n.text("LVM_THIN_ENABLE"), "yes"),
		}
		if d.Format == "" {
			d.Format = strings.ToLower(n.text("DRIVER"))
		}
		d.SizeMiB, _ = strconv.ParseInt(n.text("SIZE"), 10, 64)
		out = append(out, d)
	}
	return out, nil
}

// FirstLVMDatastore is the DATASTORE_ID of the VM's first disk on the thin-only "lvm" driver
// (-1 when none): where that driver keeps the VM's volatile disks.
func FirstLVMDatastore(disks []Disk) int {
	for _, d := range disks {
		if d.TMMad == "lvm" && d.DatastoreID >= 0 {
			return d.DatastoreID
		}
	}
	return -1
}

func intOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}
