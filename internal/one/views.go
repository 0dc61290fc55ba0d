package one

import (
	"fmt"
	"strings"

	"onebackup/internal/validate"
)

// Datastore is a typed view of a DATASTORE element.
type Datastore struct{ node }

// ID is DATASTORE/ID, validated.
func (d *Datastore) ID() (int, error) { return validate.ID("datastore ID", d.text("ID")) }

// BasePath is DATASTORE/BASE_PATH, validated and cleaned.
func (d *Datastore) BasePath() (string, error) {
	p := d.text("BASE_PATH")
	if p == "" {
		return "", fmt.Errorf("datastore has no BASE_PATH")
	}
	return validate.AbsPath("datastore BASE_PATH", p)
}

// DSMad is DATASTORE/DS_MAD.
func (d *Datastore) DSMad() string { return d.text("DS_MAD") }

// Attr is DATASTORE/TEMPLATE/<name>; a present but empty attribute counts as absent.
func (d *Datastore) Attr(name string) string { return d.text("TEMPLATE/" + name) }

// RawAttr is the attribute without trimming (passwords keep their spaces).
func (d *Datastore) RawAttr(name string) string {
	e := d.e.FindElement("./TEMPLATE/" + name)
	if e == nil {
		return ""
	}
	return e.Text()
}

// VM is a typed view of a VM element.
type VM struct{ node }

// ID is VM/ID, validated.
func (v *VM) ID() (int, error) { return validate.ID("VM ID", v.text("ID")) }

// LastBridge is VM/BACKUPS/BACKUP_CONFIG/LAST_BRIDGE ("" when unset).
func (v *VM) LastBridge() string { return v.text("BACKUPS/BACKUP_CONFIG/LAST_BRIDGE") }

// SystemTM is the TM_MAD of the VM's current system datastore (last history record), lower-cased.
func (v *VM) SystemTM() string {
	h := v.e.FindElements("./HISTORY_RECORDS/HISTORY")
	if len(h) == 0 {
		return ""
	}
	return strings.ToLower(node{h[len(h)-1]}.text("TM_MAD"))
}

// Image is a typed view of an IMAGE element (a backup image).
type Image struct{ node }

// Increment is one restore point of a backup image.
type Increment struct {
	ID     int
	Source string
}

// Increments is the chain in document order; an image without increments is {0: SOURCE}.
func (i *Image) Increments() ([]Increment, error) {
	var out []Increment
	for _, e := range i.e.FindElements("./BACKUP_INCREMENTS/INCREMENT") {
		n := node{e}
		id, err := validate.ID("increment ID", n.text("ID"))
		if err != nil {
			return nil, err
		}
		out = append(out, Increment{ID: id, Source: n.text("SOURCE")})
	}
	if len(out) == 0 {
		src := i.text("SOURCE")
		if src == "" {
			return nil, fmt.Errorf("backup image has neither SOURCE nor BACKUP_INCREMENTS")
		}
		out = append(out, Increment{ID: 0, Source: src})
	}
	return out, nil
}

// VMID is IMAGE/VMS/ID (the backed-up VM), or -1 when absent.
func (i *Image) VMID() (int, error) {
	s := i.text("VMS/ID")
	if s == "" {
		return -1, nil
	}
	return validate.ID("image VMS/ID", s)
}

// BackupJobID is IMAGE/TEMPLATE/BACKUP_JOB_ID, else IMAGE/BACKUP_JOB_ID (stat messages); "" if none.
func (i *Image) BackupJobID() (string, error) {
	s := i.text("TEMPLATE/BACKUP_JOB_ID")
	if s == "" {
		s = i.text("BACKUP_JOB_ID")
	}
	if s == "" {
		return "", nil
	}
	if _, err := validate.ID("backup job ID", s); err != nil {
		return "", err
	}
	return s, nil
}

// ID is IMAGE/ID, validated.
func (i *Image) ID() (int, error) { return validate.ID("image ID", i.text("ID")) }

// DatastoreID is IMAGE/DATASTORE_ID, validated.
func (i *Image) DatastoreID() (int, error) {
	return validate.ID("image DATASTORE_ID", i.text("DATASTORE_ID"))
}

// Format is IMAGE/FORMAT lower-cased ("rbd" marks legacy Ceph chains).
func (i *Image) Format() string { return strings.ToLower(i.text("FORMAT")) }

// Path is IMAGE/PATH.
func (i *Image) Path() string { return i.text("PATH") }
