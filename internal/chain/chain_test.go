package chain

import "testing"

func TestChainOperations(t *testing.T) {
	c, err := Parse("0:a,1:b,2:c,3:d,4:e")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.KeepLast(3, "X").String(); got != "2:X,3:d,4:e" {
		t.Errorf("KeepLast = %s", got)
	}
	if got := c.UpTo(1).String(); got != "0:a,1:b" {
		t.Errorf("UpTo = %s", got)
	}
	two, unknown := 2, 9
	if c.Pick(&two).Snap != "c" || c.Pick(&unknown).Snap != "e" || c.Pick(nil).Snap != "e" {
		t.Error("Pick")
	}
	for _, bad := range []string{"a", "0:", ":a", "x:a", "-1:a", "0:a,,1:b", "+1:a"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestParseURL(t *testing.T) {
	good := map[string]string{
		"restic://100//0:f130ed80,1:1995054d/var/lib/one/datastores/0/22/backup/disk.0.1":         "0",
		"rsync://102/7/0:0e6658,1:a1b2c3/var/lib/one/datastores/102/21/a1b2c3/disk.1.1":           "1",
		"rsync+rbd://102//0:0e6658,1:a1b2c3/var/lib/one/datastores/102/21/a1b2c3/disk.0.1.rbdiff": "0",
		"restic://100//0:f130ed80/var/lib/one/datastores/0/22/backup/disk.tpm.0":                  "tpm",
	}
	for s, idx := range good {
		u, err := ParseURL(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if u.String() != s || u.DiskIndex() != idx {
			t.Errorf("%s: round trip %s, index %s", s, u, u.DiskIndex())
		}
	}
	bad := []string{
		"http://100//0:f130ed80/var/lib/one/datastores/0/22/backup/disk.0.1",
		"restic://x//0:f130ed80/var/lib/one/datastores/0/22/backup/disk.0.1",
		"restic://100/a/0:f130ed80/var/lib/one/datastores/0/22/backup/disk.0.1",
		"restic://100//0:f130ed8'/var/lib/one/datastores/0/22/backup/disk.0.1",
		"restic://100//0:f130ed80/var/lib/one/../datastores/0/22/backup/disk.0.1",
		"restic://100//0:f130ed80/var/lib/one/datastores/0/22/backup/vm.xml",
		"restic://100//0:f130ed80/etc/disk.0.1",
		"rsync://102//0:0e6658/var/lib/one/datastores/102/21/a b/disk.0.1",
		"rsync://102//0:0e66;8/var/lib/one/datastores/102/21/0e6658/disk.0.1",
		"restic://100//0:f130ed80//var/lib/one/datastores/0/22/backup/disk.0.1",
		"restic://100//f130ed80/var/lib/one/datastores/0/22/backup/disk.0.1",
	}
	for _, s := range bad {
		if _, err := ParseURL(s); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}
