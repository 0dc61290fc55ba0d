package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestResticOldVersion runs the restic driver with Debian's restic 0.14 on the frontend and the
// hypervisor: short snapshot ids in the JSON summary, no exit codes 10-12, no --retry-lock.
func TestResticOldVersion(t *testing.T) {
	old := filepath.Join(h.repo, ".cache/restic-0.14/usr/bin/restic")
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("restic 0.14 not unpacked by setup-deps.sh: %v", err)
	}
	remotes := "/var/lib/one/remotes-restic014"
	hostRemotes := "/var/tmp/one-restic014"
	for _, d := range []string{remotes, hostRemotes} {
		os.RemoveAll(d)
		os.MkdirAll(d+"/datastore/restic", 0o755)
		run(t, "install", "-m", "0755", old, d+"/datastore/restic/restic")
	}
	run(t, "install", "-m", "0755", filepath.Join(h.repo, "bin/onebackup"), hostRemotes+"/datastore/onebackup")
	chownOneadmin(t, remotes)
	chownOneadmin(t, hostRemotes)
	t.Cleanup(func() { os.RemoveAll(remotes); os.RemoveAll(hostRemotes) })
	env := []string{"ONEBACKUP_REMOTES=" + remotes, "ONEBACKUP_HOST_REMOTES=" + hostRemotes}

	base := resetDS(t, 129)
	ds := resticDS(129, nil)
	stageBackup(t, stagingOf(63), 63, 0, []int{16, 8}, 2)
	id1 := h.resticBackup(t, ds, "hv1", 63, "", "", env...)
	st := stageBackup(t, stagingOf(63), 63, 0, []int{16, 8}, 2)
	id2 := h.resticBackup(t, ds, "hv1", 63, "", "", env...)
	if id1 == id2 {
		t.Fatal("two backups, one id")
	}
	out := h.asOneadmin(t, []string{"RESTIC_PASSWORD=" + resticPassword}, old, "--repo=sftp:oneadmin@bk1:"+base+"/63", "version")
	if !strings.Contains(out, "0.14") {
		t.Fatalf("not restic 0.14: %s", out)
	}
	url := fmt.Sprintf("restic://129//0:%s/var/lib/one/datastores/0/63/backup/disk.1.0", id1)
	img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH></IMAGE>", url)
	if got := h.mustDriver(t, "restic", "stat", []string{"1"}, dsMadStdin(img, ds), env...); got != "8\n" {
		t.Errorf("stat printed %q", got)
	}
	lsOut := h.mustDriver(t, "restic", "ls", []string{"-i", "-1"}, backupStdin(ds, vmXML(63, "")+imageXML(3, 63, "", []inc{{0, id2}}, "")), env...)
	if !regexp.MustCompile(`^\{"0":"restic://129//0:` + id2 + `/var/lib/one/datastores/0/63/backup/disk.0.0","1":.*\}\n$`).MatchString(lsOut) {
		t.Errorf("ls printed %q", lsOut)
	}
	h.mustDriver(t, "restic", "rm", []string{"3"}, dsMadStdin(imageXML(3, 63, "", []inc{{0, id1}}, ""), ds), env...)
	snaps := h.snapshots(t, base+"/63")
	if len(snaps) != 1 || !strings.HasPrefix(snaps[0].ID, id2) {
		t.Errorf("after rm with restic 0.14: %+v", snaps)
	}
	h.checkSnapshot(t, base+"/63", id2, 63, st)
}
