// Package matrix is the compatibility matrix of host-side VM backups (hypervisor × storage ×
// full/incremental × live/power-off) as one table, and the resolver that checks every backup
// request against it. Nothing else in the project decides whether a combination is supported:
// adapters are chosen here, and the tests iterate this same table.
package matrix

import (
	"fmt"
	"slices"
	"strings"
)

// Hypervisor is VM_MAD of the VM's last history record.
type Hypervisor string

const (
	KVM Hypervisor = "kvm"
	LXC Hypervisor = "lxc"
)

// Storage is the kind of a disk as the host side sees it.
type Storage string

const (
	FileQcow2 Storage = "file-qcow2" // qcow2 file on a qcow2/shared/ssh/local system datastore
	FileRaw   Storage = "file-raw"   // raw file on the same drivers
	Ceph      Storage = "ceph"       // RBD image
	LVMThin   Storage = "lvm-thin"   // thin LV (fs_lvm_ssh with LVM_THIN_ENABLE, lvm)
	LVMThick  Storage = "lvm-thick"  // thick LV (fs_lvm_ssh)
	LVMShared Storage = "lvm-shared" // fs_lvm: no backup support at all
)

// Side is the storage folder that serves a kind of disk (internal/storage/<side>): the file
// side reads qcow2 and raw files, the rbd side RBD images, the lvm side logical volumes.
type Side string

const (
	SideFile Side = "file"
	SideRBD  Side = "rbd"
	SideLVM  Side = "lvm"
)

// Side is the storage side serving the kind ("" for kinds nothing serves).
func (s Storage) Side() Side {
	switch s {
	case FileQcow2, FileRaw:
		return SideFile
	case Ceph:
		return SideRBD
	case LVMThin, LVMThick:
		return SideLVM
	}
	return ""
}

// Cell is one (full|incremental, live|power-off) entry of a row.
type Cell struct {
	OK     bool
	Reason string // why not, for the error message (only when !OK)
	// OptIn names the datastore attribute that turns a refused cell on: code the project has
	// proven but does not enable by default, because the row's own OpenNebula release does not
	// offer it (an operator enables it for the VMs backed up into that datastore).
	OptIn string
}

func yes() Cell          { return Cell{OK: true} }
func no(why string) Cell { return Cell{Reason: why} }

// optIn is a cell refused unless the datastore attribute attr is YES.
func optIn(attr, why string) Cell {
	return Cell{Reason: why + "; set " + attr + "=YES on the backup datastore to enable them", OptIn: attr}
}

// LVMThinIncrements is the backup datastore attribute that enables incremental backups of thin
// LVs (thin_delta between the chain's anchor snapshots).
const LVMThinIncrements = "LVM_THIN_INCREMENTS"

// Row is one line of the matrix.
type Row struct {
	Hypervisor Hypervisor
	Storage    Storage
	// Served: this project's host side serves the row (its hypervisor side and its storage side
	// are built into onebackup-host). A row that is not served keeps OpenNebula's own TM scripts
	// (make install leaves them in place) and is refused by our host side.
	Served bool
	// RestoreInPlace: these drivers also serve the in-place restore (TM restore, `onevm
	// restore`) of the row's disks. A system datastore driver's restore is taken over only when
	// every kind of disk it holds has it (RestoreDrivers).
	RestoreInPlace bool
	FullLive       Cell
	FullPowerOff   Cell
	IncrLive       Cell
	IncrPowerOff   Cell
	// IncrementModes lists the INCREMENT_MODE values that mean something for the row (the
	// KVM file adapter: CBT and SNAPSHOT; others ignore INCREMENT_MODE, as the reference).
	IncrementModes []IncrementMode
}

// Name is how errors name the row ("KVM file raw").
func (r Row) Name() string {
	return strings.ToUpper(string(r.Hypervisor)) + " " + strings.ReplaceAll(string(r.Storage), "-", " ")
}

// Cell returns the entry for a kind and a mode.
func (r Row) Cell(incremental, live bool) Cell {
	switch {
	case !incremental && live:
		return r.FullLive
	case !incremental:
		return r.FullPowerOff
	case live:
		return r.IncrLive
	default:
		return r.IncrPowerOff
	}
}

// IncrementMode is BACKUP_CONFIG/INCREMENT_MODE.
type IncrementMode string

const (
	CBT      IncrementMode = "CBT"
	Snapshot IncrementMode = "SNAPSHOT"
)

const (
	rawFullOnly   = "raw disks support full backups only (oned forces MODE=FULL for VMs with raw file disks; convert the disk to qcow2 for incremental backups)"
	thickFullOnly = "thick LVM supports power-off full backups only (enable LVM_THIN_ENABLE for live and incremental backups)"
	thinFullOnly  = "incremental backups of thin LVs are off by default (OpenNebula's own LVM thin increments lose zeroed and discarded blocks)"
	lvmShared     = "the fs_lvm (shared LVM) driver does not support backups"
	lxcLive       = "LXC containers on this storage can be backed up only while powered off"
	lxcIncr       = "LXC containers support full backups only"
	interactive   = "interactive backups (INTERACTIVE=YES, OneBEX) are not supported by these drivers yet; set INTERACTIVE=NO in the VM's backup configuration"
)

// Table is the matrix (spec §0.3 with the project's policy for the rows the reference only
// half-supports). Order matters only for listings.
var Table = []Row{
	{Hypervisor: KVM, Storage: FileQcow2, Served: true, RestoreInPlace: true, FullLive: yes(), FullPowerOff: yes(), IncrLive: yes(), IncrPowerOff: yes(), IncrementModes: []IncrementMode{CBT, Snapshot}},
	{Hypervisor: KVM, Storage: FileRaw, Served: true, RestoreInPlace: true, FullLive: yes(), FullPowerOff: yes(), IncrLive: no(rawFullOnly), IncrPowerOff: no(rawFullOnly)},
	{Hypervisor: KVM, Storage: Ceph, Served: true, RestoreInPlace: true, FullLive: yes(), FullPowerOff: yes(), IncrLive: yes(), IncrPowerOff: yes()},
	{Hypervisor: KVM, Storage: LVMThin, Served: true, FullLive: yes(), FullPowerOff: yes(), IncrLive: optIn(LVMThinIncrements, thinFullOnly), IncrPowerOff: optIn(LVMThinIncrements, thinFullOnly)},
	{Hypervisor: KVM, Storage: LVMThick, Served: true, FullLive: no(thickFullOnly), FullPowerOff: yes(), IncrLive: no(thickFullOnly), IncrPowerOff: no(thickFullOnly)},
	{Hypervisor: KVM, Storage: LVMShared, FullLive: no(lvmShared), FullPowerOff: no(lvmShared), IncrLive: no(lvmShared), IncrPowerOff: no(lvmShared)},
	{Hypervisor: LXC, Storage: FileQcow2, Served: true, RestoreInPlace: true, FullLive: no(lxcLive), FullPowerOff: yes(), IncrLive: no(lxcIncr), IncrPowerOff: no(lxcIncr)},
	{Hypervisor: LXC, Storage: FileRaw, Served: true, RestoreInPlace: true, FullLive: no(lxcLive), FullPowerOff: yes(), IncrLive: no(lxcIncr), IncrPowerOff: no(lxcIncr)},
	{Hypervisor: LXC, Storage: Ceph, Served: true, RestoreInPlace: true, FullLive: no(lxcLive), FullPowerOff: yes(), IncrLive: no(lxcIncr), IncrPowerOff: no(lxcIncr)},
	{Hypervisor: LXC, Storage: LVMThin, Served: true, FullLive: yes(), FullPowerOff: yes(), IncrLive: no(lxcIncr), IncrPowerOff: no(lxcIncr)},
	{Hypervisor: LXC, Storage: LVMThick, FullLive: no("LXC on thick LVM: no backup support"), FullPowerOff: no("LXC on thick LVM: no backup support"), IncrLive: no(lxcIncr), IncrPowerOff: no(lxcIncr)},
}

// Lookup finds the row of a hypervisor and a storage kind.
func Lookup(hv Hypervisor, st Storage) (Row, bool) {
	for _, r := range Table {
		if r.Hypervisor == hv && r.Storage == st {
			return r, true
		}
	}
	return Row{}, false
}

// Request is one backup as oned asks for it, for one disk.
type Request struct {
	Hypervisor    Hypervisor
	Storage       Storage
	Incremental   bool // MODE=INCREMENT
	Live          bool // LCM state BACKUP (69) rather than BACKUP_POWEROFF (70)
	IncrementMode IncrementMode
	FSFreeze      string // NONE, AGENT, SUSPEND
	Interactive   bool   // INTERACTIVE=YES
	// OptIns are the datastore attributes set to YES that enable opt-in cells (Cell.OptIn).
	OptIns []string
}

// Decision is an allowed request: the row (whose hypervisor and storage sides do the work) and how.
type Decision struct {
	Row           Row
	Incremental   bool
	Live          bool
	IncrementMode IncrementMode // "" for full backups and rows that ignore it
}

// Error is a request outside the matrix; the message names the row.
type Error struct {
	Row    string
	Reason string
}

func (e *Error) Error() string { return e.Row + ": " + e.Reason }

// Kind renders "full live", "incremental power-off", ...
func Kind(incremental, live bool) string {
	k := "full"
	if incremental {
		k = "incremental"
	}
	if live {
		return k + " live"
	}
	return k + " power-off"
}

// Resolve checks one request against the table.
func Resolve(req Request) (Decision, error) {
	row, ok := Lookup(req.Hypervisor, req.Storage)
	if !ok {
		name := strings.ToUpper(string(req.Hypervisor)) + " " + string(req.Storage)
		return Decision{}, &Error{Row: name, Reason: "not in the backup compatibility matrix"}
	}
	if req.Interactive {
		return Decision{}, &Error{Row: row.Name(), Reason: interactive}
	}
	cell := row.Cell(req.Incremental, req.Live)
	if !cell.OK && cell.OptIn != "" && slices.Contains(req.OptIns, cell.OptIn) {
		cell.OK = true
	}
	if !cell.OK {
		return Decision{}, &Error{Row: row.Name(), Reason: fmt.Sprintf("%s backup not supported: %s", Kind(req.Incremental, req.Live), cell.Reason)}
	}
	if !row.Served {
		return Decision{}, &Error{Row: row.Name(), Reason: "allowed by the matrix but not served by these drivers yet (OpenNebula's own TM scripts back it up)"}
	}
	d := Decision{Row: row, Incremental: req.Incremental, Live: req.Live}
	if req.Incremental && len(row.IncrementModes) > 0 {
		d.IncrementMode = NormalizeIncrementMode(string(req.IncrementMode))
	}
	return d, nil
}

// NormalizeIncrementMode applies oned's rule: SNAPSHOT (any case) or CBT for anything else.
func NormalizeIncrementMode(s string) IncrementMode {
	if strings.EqualFold(strings.TrimSpace(s), "snapshot") {
		return Snapshot
	}
	return CBT
}

// ResolveVM resolves every disk of a VM; all disks must be allowed and served by one storage side.
func ResolveVM(reqs []Request) (Decision, error) {
	if len(reqs) == 0 {
		return Decision{}, fmt.Errorf("no disks to back up")
	}
	var first Decision
	for i, r := range reqs {
		d, err := Resolve(r)
		if err != nil {
			return Decision{}, err
		}
		if i == 0 {
			first = d
			continue
		}
		if d.Row.Hypervisor != first.Row.Hypervisor || d.Row.Storage.Side() != first.Row.Storage.Side() {
			return Decision{}, &Error{Row: d.Row.Name(), Reason: fmt.Sprintf("a VM mixing %s and %s disks cannot be backed up in one run", first.Row.Name(), d.Row.Name())}
		}
	}
	return first, nil
}

// systemDrivers lists, per system datastore TM_MAD, the kinds of disk it holds (spec §3.1). It
// classifies disks (StorageOf) and, with the table's Served flags, tells which TM drivers our
// host side takes over (TMDrivers).
var systemDrivers = []struct {
	TM    string
	Kinds []Storage
}{
	{"qcow2", []Storage{FileQcow2, FileRaw}},
	{"shared", []Storage{FileQcow2, FileRaw}},
	{"ssh", []Storage{FileQcow2, FileRaw}},
	{"local", []Storage{FileQcow2, FileRaw}},
	{"ceph", []Storage{Ceph}},
	{"fs_lvm_ssh", []Storage{LVMThin, LVMThick}},
	{"lvm", []Storage{LVMThin}},
	{"fs_lvm", []Storage{LVMShared}},
}

// TMDrivers are the system datastore TM_MADs whose backup actions these drivers serve: those
// holding a kind of disk of a served row. make install replaces exactly these in <remotes>/tm.
func TMDrivers() []string {
	var out []string
	for _, d := range systemDrivers {
		served := false
		for _, k := range d.Kinds {
			for _, r := range Table {
				served = served || r.Served && r.Storage == k
			}
		}
		if served {
			out = append(out, d.TM)
		}
	}
	return out
}

// OptInAttributes lists the datastore attributes that enable opt-in cells of the rows a system
// datastore driver's disks fall in (none for most drivers).
func OptInAttributes(systemTM string) []string {
	var out []string
	for _, d := range systemDrivers {
		if d.TM != strings.ToLower(systemTM) {
			continue
		}
		for _, r := range Table {
			if !slices.Contains(d.Kinds, r.Storage) {
				continue
			}
			for _, c := range []Cell{r.FullLive, r.FullPowerOff, r.IncrLive, r.IncrPowerOff} {
				if c.OptIn != "" && !slices.Contains(out, c.OptIn) {
					out = append(out, c.OptIn)
				}
			}
		}
	}
	return out
}

// RestoreDrivers are the system datastore TM_MADs whose in-place restore these drivers serve:
// those all of whose kinds of disk are restored in place on every hypervisor row. make install
// replaces <remotes>/tm/<tm_mad>/restore for exactly these.
func RestoreDrivers() []string {
	var out []string
	for _, d := range systemDrivers {
		ok := true
		for _, k := range d.Kinds {
			for _, r := range Table {
				if r.Storage == k && !r.RestoreInPlace {
					ok = false
				}
			}
		}
		if ok {
			out = append(out, d.TM)
		}
	}
	return out
}

// StorageOf classifies a disk from the system datastore TM_MAD and the disk's format and
// LVM_THIN_ENABLE.
func StorageOf(systemTM, format string, lvmThin bool) (Storage, error) {
	tm := strings.ToLower(systemTM)
	for _, d := range systemDrivers {
		if d.TM != tm {
			continue
		}
		switch {
		case d.Kinds[0] == FileQcow2:
			switch strings.ToLower(format) {
			case "qcow2":
				return FileQcow2, nil
			case "raw", "":
				return FileRaw, nil
			}
			return "", fmt.Errorf("disk format %q on a %s system datastore is not a file format the backup drivers know", format, systemTM)
		case len(d.Kinds) == 2 && !lvmThin:
			return d.Kinds[1], nil
		}
		return d.Kinds[0], nil
	}
	return "", fmt.Errorf("system datastore TM_MAD %q has no backup support (spec §3.1)", systemTM)
}
