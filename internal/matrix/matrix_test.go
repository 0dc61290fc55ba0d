package matrix

import (
	"errors"
	"strings"
	"testing"
)

// Every cell of every row resolves as the table says: allowed cells give the row's adapter,
// the others an *Error naming the row and carrying the cell's reason.
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
				if cell.OK {
					if err != nil {
						t.Errorf("%s %s: %v", row.Name(), Kind(incr, live), err)
						continue
					}
					if d.Adapter == "" || d.Adapter != row.Adapter {
						t.Errorf("%s %s: adapter %q, want %q", row.Name(), Kind(incr, live), d.Adapter, row.Adapter)
					}
					continue
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
	if _, err := Resolve(Request{Hypervisor: LXC, Storage: LVMThin, Live: true, FSFreeze: "AGENT"}); err == nil {
		t.Error("LXC LVM thin live with FS_FREEZE=AGENT accepted")
	}
	if _, err := Resolve(Request{Hypervisor: LXC, Storage: LVMThin, Live: true, FSFreeze: "NONE"}); err != nil {
		t.Error(err)
	}
}

func TestResolveVM(t *testing.T) {
	q := Request{Hypervisor: KVM, Storage: FileQcow2, Live: true}
	r := Request{Hypervisor: KVM, Storage: FileRaw, Live: true}
	if d, err := ResolveVM([]Request{q, r}); err != nil || d.Adapter != AdapterKVMFile {
		t.Errorf("qcow2+raw full: %+v %v", d, err)
	}
	q.Incremental, r.Incremental = true, true
	if _, err := ResolveVM([]Request{q, r}); err == nil || !strings.Contains(err.Error(), "raw disks") {
		t.Errorf("qcow2+raw incremental: %v", err)
	}
	c := Request{Hypervisor: KVM, Storage: Ceph}
	if _, err := ResolveVM([]Request{{Hypervisor: KVM, Storage: FileQcow2}, c}); err == nil {
		t.Error("mixed adapters accepted")
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
		got, err := StorageOf(c.sys, "", "FILE", c.format, c.thin)
		if err != nil || got != c.want {
			t.Errorf("%s/%s: %s %v, want %s", c.sys, c.format, got, err, c.want)
		}
	}
	if _, err := StorageOf("dev", "", "", "raw", false); err == nil {
		t.Error("dev TM accepted")
	}
}
