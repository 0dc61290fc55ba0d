package one

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
)

func TestParseMessageRawAndBase64(t *testing.T) {
	xml := `<DS_DRIVER_ACTION_DATA><IMAGE><SOURCE>abcdef12</SOURCE><VMS><ID>4</ID></VMS></IMAGE><DATASTORE><ID>100</ID><BASE_PATH>/var/lib/one//datastores/100</BASE_PATH></DATASTORE></DS_DRIVER_ACTION_DATA>`
	b64 := base64.StdEncoding.EncodeToString([]byte(xml))
	for _, in := range []string{xml, b64, b64[:40] + "\n" + b64[40:] + "\n"} {
		m, err := ParseMessage([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		ds, err := m.Datastore()
		if err != nil {
			t.Fatal(err)
		}
		if p, _ := ds.BasePath(); p != "/var/lib/one/datastores/100" {
			t.Errorf("BasePath = %q", p)
		}
		img, _ := m.Image()
		if incs, _ := img.Increments(); len(incs) != 1 || incs[0].Source != "abcdef12" {
			t.Errorf("Increments = %v", incs)
		}
	}
	for _, bad := range []string{"", "%%%", "<a>", "PGE+"} {
		if _, err := ParseMessage([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestBareVMElement(t *testing.T) {
	m, err := ParseMessage([]byte("<VM><ID>7</ID><BACKUPS><BACKUP_CONFIG><LAST_BRIDGE>br1</LAST_BRIDGE></BACKUP_CONFIG></BACKUPS></VM>"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := m.VM()
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := vm.ID(); id != 7 || vm.LastBridge() != "br1" {
		t.Errorf("VM view: %d %q", id, vm.LastBridge())
	}
}

func TestDatastoreConf(t *testing.T) {
	f := filepath.Join(t.TempDir(), "datastore.conf")
	os.WriteFile(f, []byte("# comment\n  # indented comment\n\nexport BACKUP_BASE_PATH=\"/var/backups\"\nSUPPORTED_FS=ext4,xfs # list\nQ='single'\n"), 0o644)
	conf, err := LoadConf(f)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"BACKUP_BASE_PATH": "/var/backups", "SUPPORTED_FS": "ext4,xfs", "Q": "single"}
	for k, v := range want {
		if conf[k] != v {
			t.Errorf("%s = %q, want %q", k, conf[k], v)
		}
	}
	if c, err := LoadConf(filepath.Join(t.TempDir(), "missing")); err != nil || len(c) != 0 {
		t.Errorf("missing file: %v %v", c, err)
	}
}

func TestBackupArgsAndStaging(t *testing.T) {
	a, err := ParseBackupArgs([]string{"kvm1:/var/lib/one//datastores/0/42", "0:1", "one-42", "7", "42", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Host != "kvm1" || a.VMDir != "/var/lib/one/datastores/0/42" || a.JobID != "7" || a.VMID != 42 {
		t.Errorf("%+v", a)
	}
	if s, _ := StagingDir(nil, a.VMDir, 42); s != "/var/lib/one/datastores/0/42/backup" {
		t.Errorf("staging %s", s)
	}
	if s, _ := StagingDir(map[string]string{"BACKUP_BASE_PATH": "/b//x/"}, a.VMDir, 42); s != "/b/x/42/backup" {
		t.Errorf("staging with BACKUP_BASE_PATH %s", s)
	}
}

func TestDiskSizeFromVMXML(t *testing.T) {
	vm := "<VM><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>2048</SIZE></DISK><DISK><DISK_ID>1</DISK_ID></DISK></TEMPLATE></VM>"
	stored := []byte(base64.StdEncoding.EncodeToString([]byte(vm)))
	if s, err := DiskSizeFromVMXML(stored, "0"); err != nil || s != "2048" {
		t.Errorf("disk 0: %q %v", s, err)
	}
	if _, err := DiskSizeFromVMXML(stored, "1"); err == nil {
		t.Error("disk 1 without SIZE accepted")
	}
	if _, err := DiskSizeFromVMXML(stored, "2"); err == nil {
		t.Error("missing disk accepted")
	}
}

func TestFailureLineRedactsAndFolds(t *testing.T) {
	RegisterSecret("s3cr3t'pw")
	got := FailureLine(errString("restic failed\nFatal: s3cr3t'pw wrong\n"))
	if got != "restic failed; Fatal: *** wrong" {
		t.Errorf("got %q", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
