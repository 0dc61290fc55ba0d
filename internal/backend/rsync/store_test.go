package rsync

import (
	"context"
	"strings"
	"testing"

	"onebackup/internal/agent"
	"onebackup/internal/backend"
)

func TestBackupDir(t *testing.T) {
	s := &Store{cfg: &Config{BasePath: "/var/lib/one/datastores/200", Host: "bk1", User: "oneadmin"}}
	d, err := s.backupDir(42, "0a1b2c")
	if err != nil || d != "/var/lib/one/datastores/200/42/0a1b2c" {
		t.Fatalf("backupDir: %q %v", d, err)
	}
	for _, snap := range []string{"", ".", "..", "../43", "a/b", "/etc", "a b", "x;id", "-rf", "a\nb"} {
		if d, err := s.backupDir(42, snap); err == nil {
			t.Errorf("snapshot %q accepted as %q", snap, d)
		}
	}
	if _, err := s.backupDir(-1, "0a1b2c"); err == nil {
		t.Errorf("a negative VM id was accepted")
	}
}

func TestRemoteSpec(t *testing.T) {
	s := &Store{cfg: &Config{Host: "bk1", User: "oneadmin"}}
	if got := s.remoteSpec("/d"); got != "oneadmin@bk1:/d" {
		t.Errorf("remoteSpec: %q", got)
	}
	s.cfg.Host = "fd00::1"
	if got := s.remoteSpec("/d"); got != "oneadmin@[fd00::1]:/d" {
		t.Errorf("remoteSpec IPv6: %q", got)
	}
}

func TestAllocatedMiB(t *testing.T) {
	b := &backend.Backup{Files: []agent.File{{Name: "disk.0.0", Size: 1 << 30, Allocated: 3 << 20}, {Name: "vm.xml", Size: 100, Allocated: 4096}}}
	if got := allocatedMiB(b); got != 4<<20 {
		t.Errorf("allocatedMiB = %d, want %d (3 MiB + 4 KiB rounded up)", got, 4<<20)
	}
	if got := allocatedMiB(&backend.Backup{}); got != 0 {
		t.Errorf("allocatedMiB of nothing = %d", got)
	}
}

// What a killed upload left is removed only when it is exactly a backup directory of this
// datastore; anything else is refused before a command could run (the store has no runner).
func TestRemoveLeftoverRefuses(t *testing.T) {
	s := &Store{cfg: &Config{BasePath: "/var/lib/one/datastores/200", Host: "bk1", User: "oneadmin"}}
	for _, bad := range []string{
		"", "/", "/var/lib/one/datastores/200", "/var/lib/one/datastores/200/42",
		"/var/lib/one/datastores/200/42/..", "/var/lib/one/datastores/201/42/a1b2c3",
		"/var/lib/one/datastores/200/x/a1b2c3", "/var/lib/one/datastores/200/42/a1b2c3/deeper",
		"/var/lib/one/datastores/200/../200/42/a1b2c3", "relative/42/a1b2c3",
	} {
		if err := s.RemoveLeftover(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "refusing") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
