package matrix

import (
	"errors"
	"strings"
	"testing"
)

// Every cell of every row resolves as the table says: allowed cells of served rows give the row,
// allowed cells of rows not served yet and refused cells an *Error naming the row and the reason.
func TestResolveIteratesTable(t *testing.T) {
	seen := map[string]bool{}
	for _, row := range Table {
		key := string(row.Hypervisor) + "/" + string(row.Storage)
		if seen[key] {
			t.Errorf("row %s appears twice", key)
		}
		seen[key] = true
		for _, incr := range []bool{false, true} {
			for _, live := range []bool{false, true} {
				cell := row.Cell(incr, live)
				d, err := Resolve(Request{Hypervisor: row.Hypervisor, Storage: row.Storage, Incremental: incr, Live: live})
				if cell.OK && row.Served {
					if err != nil {
						t.Errorf("%s %s: %v", row.Name(), Kind(incr, live), err)
						continue
					}
					if d.Row.Name() != row.Name() || d.Row.Storage.Side() == "" {
						t.Errorf("%s %s: resolved to row %q (side %q)", row.Name(), Kind(incr, live), d.Row.Name(), d.Row.Storage.Side())
					}
					continue
				}
				if cell.OK {
					cell.Reason = "not served by these drivers yet"
				}
				var me *Error
				if !errors.As(err, &me) {
					t.Errorf("%s %s: got %v, want a matrix error", row.Name(), Kind(incr, live), err)
					continue
				}
				if me.Row != row.Name() || !strings.Contains(err.Error(), cell.Reason) || cell.Reason == "" {
					t.Errorf("%s %s: error %q does not name the row and reason", row.Name(), Kind(incr, live), err)
				}
			}
		}
	}
}

// The seed's table, cell by cell (issue 5): a change to Table must be deliberate.
func TestSeedMatrix(t *testing.T) {
	want := map[string][4]bool{ // full live, full power-off, incr live, incr power-off
		"KVM file qcow2": {true, true, true, true},
		"KVM file raw":   {true, true, false, false},
		"KVM ceph":       {true, true, true, true},
		"KVM lvm thin":   {true, true, false, false},
		"KVM lvm thick":  {false, true, false, false},
		"LXC file qcow2": {false, true, false, false},
		"LXC file raw":   {false, true, false, false},
		"LXC ceph":       {false, true, false, false},
		"LXC lvm thin":   {true, true, false, false},
	}
	for _, row := range Table {
		w, ok := want[row.Name()]
		if !ok {
			continue
		}
		got := [4]bool{row.FullLive.OK, row.FullPowerOff.OK, row.IncrLive.OK, row.IncrPowerOff.OK}
		if got != w {
			t.Errorf("%s: %v, want %v", row.Name(), got, w)
		}
		delete(want, row.Name())
	}
	for name := range want {
		t.Errorf("row %s missing", name)
	}
}

func TestRawIncrementalMessage(t *testing.T) {
	_, err := Resolve(Request{Hypervisor: KVM, Storage: FileRaw, Incremental: true, Live: true})
	if err == nil || !strings.Contains(err.Error(), "raw disks support full backups only") || !strings.HasPrefix(err.Error(), "KVM file raw") {
		t.Fatalf("got %v", err)
	}
}

func TestIncrementModeAndFreeze(t *testing.T) {
	d, err := Resolve(Request{Hypervisor: KVM, Storage: FileQcow2, Incremental: true, IncrementMode: "snapshot"})
	if err != nil || d.IncrementMode != Snapshot {
		t.Fatalf("%+v %v", d, err)
	}
	d, _ = Resolve(Request{Hypervisor: KVM, Storage: FileQcow2, Incremental: true, IncrementMode: "bogus"})
	if d.IncrementMode != CBT {
		t.Errorf("unknown INCREMENT_MODE gave %q, want CBT", d.IncrementMode)
	}
	d, _ = Resolve(Request{Hypervisor: KVM, Storage: FileQcow2, IncrementMode: "snapshot"})
	if d.IncrementMode != "" {
		t.Errorf("full backup carries increment mode %q", d.IncrementMode)
	}
	// LXC live on thin LVs: the LXC side freezes the container itself (lxc-freeze, fsfreeze).
	for _, f := range []string{"NONE", "AGENT", "SUSPEND"} {
		if _, err := Resolve(Request{Hypervisor: LXC, Storage: LVMThin, Live: true, FSFreeze: f}); err != nil {
			t.Errorf("LXC LVM thin live with FS_FREEZE=%s: %v", f, err)
		}
	}
}

// Opt-in cells (thin LVM increments) are refused, naming the attribute that enables them, until
// the request carries that attribute; other attributes do not enable them.
func TestOptInCells(t *testing.T) {
	n := 0
	for _, row := range Table {
		for _, live := range []bool{false, true} {
			cell := row.Cell(true, live)
			if cell.OptIn == "" {
				continue
			}
			n++
			req := Request{Hypervisor: row.Hypervisor, Storage: row.Storage, Incremental: true, Live: live}
			if _, err := Resolve(req); err == nil || !strings.Contains(err.Error(), cell.OptIn+"=YES") {
				t.Errorf("%s %s without %s: %v", row.Name(), Kind(true, live), cell.OptIn, err)
			}
			req.OptIns = []string{"SOMETHING_ELSE"}
			if _, err := Resolve(req); err == nil {
				t.Errorf("%s %s enabled by another attribute", row.Name(), Kind(true, live))
			}
			req.OptIns = []string{cell.OptIn}
			if d, err := Resolve(req); err != nil || !d.Incremental || d.Row.Name() != row.Name() {
				t.Errorf("%s %s with %s: %+v %v", row.Name(), Kind(true, live), cell.OptIn, d, err)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d opt-in cells, want the two KVM LVM thin increment cells", n)
	}
	for tm, want := range map[string]int{"fs_lvm_ssh": 1, "lvm": 1, "qcow2": 0, "ceph": 0} {
		if got := OptInAttributes(tm); len(got) != want {
			t.Errorf("opt-in attributes of %s: %v", tm, got)
		}
	}
}

func TestResolveVM(t *testing.T) {
	q := Request{Hypervisor: KVM, Storage: FileQcow2, Live: true}
	r := Request{Hypervisor: KVM, Storage: FileRaw, Live: true}
	if d, err := ResolveVM([]Request{q, r}); err != nil || d.Row.Storage.Side() != SideFile {
		t.Errorf("qcow2+raw full: %+v %v", d, err)
	}
	q.Incremental, r.Incremental = true, true
	if _, err := ResolveVM([]Request{q, r}); err == nil || !strings.Contains(err.Error(), "raw disks") {
		t.Errorf("qcow2+raw incremental: %v", err)
	}
	// Mixing storage sides in one VM is refused (with every side served or not).
	for _, row := range Table {
		if row.Hypervisor != KVM || row.Storage.Side() == SideFile || !row.FullPowerOff.OK {
			continue
		}
		if _, err := ResolveVM([]Request{{Hypervisor: KVM, Storage: FileQcow2}, {Hypervisor: KVM, Storage: row.Storage}}); err == nil {
			t.Errorf("file + %s accepted in one VM", row.Storage)
		}
	}
	if _, err := ResolveVM(nil); err == nil {
		t.Error("no disks accepted")
	}
	if _, err := Resolve(Request{Hypervisor: "xen", Storage: FileQcow2}); err == nil || !strings.Contains(err.Error(), "not in the backup compatibility matrix") {
		t.Errorf("unknown hypervisor: %v", err)
	}
}

func TestStorageOf(t *testing.T) {
	cases := []struct {
		sys, format string
		thin        bool
		want        Storage
	}{
		{"qcow2", "qcow2", false, FileQcow2}, {"shared", "raw", false, FileRaw}, {"ssh", "QCOW2", false, FileQcow2},
		{"local", "", false, FileRaw}, {"ceph", "raw", false, Ceph}, {"fs_lvm_ssh", "raw", true, LVMThin},
		{"fs_lvm_ssh", "raw", false, LVMThick}, {"lvm", "raw", false, LVMThin}, {"fs_lvm", "raw", false, LVMShared},
	}
	for _, c := range cases {
		got, err := StorageOf(c.sys, c.format, c.thin)
		if err != nil || got != c.want {
			t.Errorf("%s/%s: %s %v, want %s", c.sys, c.format, got, err, c.want)
		}
	}
	if _, err := StorageOf("dev", "raw", false); err == nil {
		t.Error("dev TM accepted")
	}
}

// INTERACTIVE=YES is refused for every row, naming the row, instead of running a normal backup.
func TestInteractiveRefused(t *testing.T) {
	for _, row := range Table {
		_, err := Resolve(Request{Hypervisor: row.Hypervisor, Storage: row.Storage, Interactive: true})
		if err == nil || !strings.Contains(err.Error(), "INTERACTIVE=YES") || !strings.HasPrefix(err.Error(), row.Name()) {
			t.Errorf("%s: interactive request gave %v", row.Name(), err)
		}
	}
}

// The TM drivers taken over are exactly those of served rows' storages: a storage whose rows are
// not served keeps OpenNebula's own scripts.
func TestTMDriversFollowTable(t *testing.T) {
	got := map[string]bool{}
	for _, d := range TMDrivers() {
		got[d] = true
	}
	for _, d := range systemDrivers {
		want := false
		for _, r := range Table {
			for _, k := range d.Kinds {
				want = want || r.Served && r.Storage == k
			}
		}
		if got[d.TM] != want {
			t.Errorf("TM driver %s: served %v, want %v", d.TM, got[d.TM], want)
		}
		if k, err := StorageOf(d.TM, "raw", false); err != nil || k.Side() != d.Kinds[0].Side() {
			t.Errorf("StorageOf(%s) = %s %v", d.TM, k, err)
		}
	}
	if !got["qcow2"] || got["fs_lvm"] {
		t.Errorf("TMDrivers() = %v", TMDrivers())
	}
}
