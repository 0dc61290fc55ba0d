package backend

import (
	"reflect"
	"strings"
	"testing"

	"onebackup/internal/one"
)

func datastore(t *testing.T, attrs string) *one.Datastore {
	t.Helper()
	m, err := one.ParseMessage([]byte("<DATASTORE><ID>100</ID><TEMPLATE>" + attrs + "</TEMPLATE></DATASTORE>"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := m.Datastore()
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestConfinementModes(t *testing.T) {
	argv := []string{"restic", "backup"}
	c, err := ParseConfinement(datastore(t, ""), "RESTIC", 100)
	if err != nil || !reflect.DeepEqual(c.Wrap(argv, "/s", nil), argv) {
		t.Errorf("no confinement: %v %v", c.Wrap(argv, "/s", nil), err)
	}
	c, _ = ParseConfinement(datastore(t, "<RESTIC_NICE>10</RESTIC_NICE><RESTIC_IONICE>3</RESTIC_IONICE>"), "RESTIC", 100)
	want := []string{"nice", "-n", "10", "ionice", "-c2", "-n3", "restic", "backup"}
	if got := c.Wrap(argv, "/s", nil); !reflect.DeepEqual(got, want) {
		t.Errorf("nice mode: %q", got)
	}
	c, _ = ParseConfinement(datastore(t, "<RESTIC_CPU_QUOTA>50</RESTIC_CPU_QUOTA><RESTIC_MAX_WIOPS>200</RESTIC_MAX_WIOPS><RESTIC_NICE>5</RESTIC_NICE>"), "RESTIC", 100)
	got := strings.Join(c.Wrap(argv, "/var/lib/one/datastores/0/4/backup", []string{"RESTIC_PASSWORD"}), "|")
	for _, part := range []string{"systemd-run|--user|", "--slice=backup.100.slice", "--property=CPUQuota=50%",
		"--property=IOWriteIOPSMax=/var/lib/one/datastores/0/4/backup 200", "--setenv=RESTIC_PASSWORD|", "|--|restic|backup"} {
		if !strings.Contains(got, part) {
			t.Errorf("systemd mode %q lacks %q", got, part)
		}
	}
	if strings.Contains(got, "nice") {
		t.Errorf("systemd mode also applies nice: %q", got)
	}
	for _, bad := range []string{"<RESTIC_NICE>x</RESTIC_NICE>", "<RESTIC_NICE>20</RESTIC_NICE>", "<RESTIC_IONICE>8</RESTIC_IONICE>",
		"<RESTIC_CPU_QUOTA>5;reboot</RESTIC_CPU_QUOTA>", "<RESTIC_MEMORY_MAX_MB>0</RESTIC_MEMORY_MAX_MB>"} {
		if _, err := ParseConfinement(datastore(t, bad), "RESTIC", 100); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
