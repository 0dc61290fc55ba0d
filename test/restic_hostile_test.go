package test

import (
	"encoding/base64"
	"os"
	"strings"
	"testing"
)

func TestResticRefusesHostileInput(t *testing.T) {
	base := resetDS(t, 118)
	stageBackup(t, stagingOf(49), 49, 0, []int{8}, 1)
	ds := resticDS(118, nil)
	vm := vmXML(49, "")
	good := backupArgs("hv1", 49, "")
	withArg := func(i int, v string) []string { a := append([]string(nil), good...); a[i] = v; return a }
	dsWith := func(k, v string) string { return resticDS(118, dsAttrs{k: v}) }
	img := func(snap string) string { return imageXML(3, 49, "", []inc{{0, snap}}, "") }
	statImg := func(url string) string { return "<IMAGE><PATH><![CDATA[" + url + "]]></PATH></IMAGE>" }

	cases := []struct {
		name    string
		action  string
		args    []string
		stdin   []byte
		wantErr string
	}{
		{"backup: invalid XML", "backup", good, []byte("<DS_DRIVER_ACTION_DATA><DATASTORE>"), "not valid XML"},
		{"backup: empty stdin", "backup", good, nil, "empty driver message"},
		{"rm: invalid base64", "rm", []string{"3"}, []byte("%%%not base64"), "neither XML nor valid base64"},
		{"monitor: base64 of garbage", "monitor", []string{"118"}, []byte(base64.StdEncoding.EncodeToString([]byte("<x"))), "not valid XML"},
		{"backup: no DATASTORE", "backup", good, []byte("<DS_DRIVER_ACTION_DATA>" + vm + "</DS_DRIVER_ACTION_DATA>"), "no DATASTORE"},
		{"backup: missing password", "backup", good, backupStdin(datastoreXML(118, "restic", dsAttrs{"RESTIC_SFTP_SERVER": "bk1"}), vm), "RESTIC_PASSWORD is not set"},
		{"backup: missing server", "backup", good, backupStdin(datastoreXML(118, "restic", dsAttrs{"RESTIC_PASSWORD": "x"}), vm), "RESTIC_SFTP_SERVER is not set"},
		{"backup: server with ;", "backup", good, backupStdin(dsWith("RESTIC_SFTP_SERVER", "bk1;touch /tmp/pwned"), vm), "invalid RESTIC_SFTP_SERVER"},
		{"backup: user as ssh option", "backup", good, backupStdin(dsWith("RESTIC_SFTP_USER", "-oProxyCommand=touch /tmp/pwned"), vm), "invalid RESTIC_SFTP_USER"},
		{"backup: bad compression", "backup", good, backupStdin(dsWith("RESTIC_COMPRESSION", "max;x"), vm), "invalid RESTIC_COMPRESSION"},
		{"backup: bad nice", "backup", good, backupStdin(dsWith("RESTIC_NICE", "5; rm -rf /"), vm), "invalid RESTIC_NICE"},
		{"backup: bad max unused", "backup", good, backupStdin(dsWith("RESTIC_PRUNE_MAX_UNUSED", "1$(id)"), vm), "invalid RESTIC_PRUNE_MAX_UNUSED"},
		{"backup: unknown backend", "backup", good, backupStdin(dsWith("RESTIC_BACKEND", "FTP"), vm), "unknown RESTIC_BACKEND"},
		{"backup: .. in VM dir", "backup", withArg(0, "hv1:/var/lib/one/datastores/0/../../../etc"), backupStdin(ds, vm), "'..' is not allowed"},
		{"backup: ; in host", "backup", withArg(0, "hv1;reboot:/var/lib/one/datastores/0/49"), backupStdin(ds, vm), "invalid host"},
		{"backup: newline in VM dir", "backup", withArg(0, "hv1:/var/lib/one/datastores/0/49\n/x"), backupStdin(ds, vm), "control characters"},
		{"backup: space in deploy id", "backup", withArg(2, "one-49 x"), backupStdin(ds, vm), "invalid deploy id"},
		{"backup: VM id with ;", "backup", withArg(4, "49;"), backupStdin(ds, vm), "invalid VM id"},
		{"backup: job id with ..", "backup", withArg(3, ".."), backupStdin(ds, vm), "invalid backup job id"},
		{"backup: VM id mismatch", "backup", withArg(4, "50"), backupStdin(ds, vm), "does not match"},
		{"backup: bridge with space", "backup", good, backupStdin(ds, vmXML(49, "hv2 -oProxyCommand=x")), "invalid LAST_BRIDGE"},
		{"backup: BASE_PATH with ..", "backup", good, backupStdin(strings.Replace(ds, "/var/lib/one//datastores/118", "/var/lib/one/../../etc", 1), vm), "'..' is not allowed"},
		{"rm: snapshot id with ;", "rm", []string{"3"}, dsMadStdin(img("abcdef12;rm -rf /"), ds), "invalid restic snapshot id"},
		{"rm: snapshot id with ..", "rm", []string{"3"}, dsMadStdin(img("../../x"), ds), "invalid restic snapshot id"},
		{"rm: image id not a number", "rm", []string{"3;x"}, dsMadStdin(img("abcdef12"), ds), "invalid image id"},
		{"rm: VM id with ..", "rm", []string{"3"}, dsMadStdin(strings.Replace(img("abcdef12"), "<VMS><ID>49", "<VMS><ID>../49", 1), ds), "invalid image VMS/ID"},
		{"stat: .. in URL path", "stat", []string{"1"}, dsMadStdin(statImg("restic://118//0:abcdef12/var/lib/one/../../etc/49/backup/disk.0.0"), ds), "'..' is not allowed"},
		{"stat: quote in URL", "stat", []string{"1"}, dsMadStdin(statImg("restic://118//0:abcdef12'/var/lib/one/datastores/0/49/backup/disk.0.0"), ds), "invalid restic snapshot id"},
		{"stat: unknown scheme", "stat", []string{"1"}, dsMadStdin(statImg("file://118//0:abcdef12/var/lib/one/datastores/0/49/backup/disk.0.0"), ds), "unknown scheme"},
		{"stat: not a disk", "stat", []string{"1"}, dsMadStdin(statImg("restic://118//0:abcdef12/etc/shadow"), ds), "not a disk file"},
		{"stat: other datastore", "stat", []string{"1"}, dsMadStdin(statImg("restic://999//0:abcdef12/var/lib/one/datastores/0/49/backup/disk.0.0"), ds), "datastore 999"},
		{"stat: non-numeric job", "stat", []string{"1"}, dsMadStdin(statImg("restic://118/x/0:abcdef12/var/lib/one/datastores/0/49/backup/disk.0.0"), ds), "invalid backup job id"},
		{"ls: newline in snapshot", "ls", []string{"-i", "-1"}, backupStdin(ds, vm+img("abcdef12\nx")), "invalid restic snapshot id"},
		{"backup_cancel: bad deploy id", "backup_cancel", []string{"hv1:/var/lib/one/datastores/0/49", "one-49;x"}, []byte(vm), "invalid deploy id"},
		{"monitor: DS id not a number", "monitor", []string{"1 18"}, dsMadStdin(ds), "invalid datastore id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { h.refused(t, "restic", c.action, c.args, c.stdin, c.wantErr) })
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("refused requests created %d entries under %s", len(entries), base)
	}
	if _, err := os.Stat("/tmp/pwned"); err == nil {
		t.Errorf("an injected command ran")
	}
}

// TestResticPasswordNeverExposed backs up with a hostile password and watches every process's
// command line while it runs: the password must never appear there, nor in any output.
func TestResticPasswordNeverExposed(t *testing.T) {
	base := resetDS(t, 119)
	st := stageBackup(t, stagingOf(51), 51, 0, []int{64}, 16)
	ds := resticDS(119, dsAttrs{"RESTIC_BWLIMIT": "8192"}) // about 2 s of upload to watch
	done := watchCmdlines(secretMarker, 0)
	r := h.driver(t, "restic", "backup", append(backupArgs("hv1", 51, ""), "-v"), backupStdin(ds, vmXML(51, "")))
	seen := done()
	if r.code != 0 {
		t.Fatalf("backup failed: %s", r.stderr)
	}
	if len(seen) > 0 {
		t.Errorf("the password appeared in command lines:\n%s", strings.Join(seen, "\n"))
	}
	if strings.Contains(r.stdout+r.stderr, secretMarker) {
		t.Errorf("the password appears in the driver's output")
	}
	if !strings.Contains(r.stderr, "RESTIC_PASSWORD=***") {
		t.Errorf("verbose log does not show the masked environment: %s", r.stderr)
	}
	h.checkSnapshot(t, base+"/51", strings.Fields(r.stdout)[0], 51, st)
	// A failing run (wrong password for the existing repository) must not print it either.
	r = h.driver(t, "restic", "backup", backupArgs("hv1", 51, ""), backupStdin(resticDS(119, dsAttrs{"RESTIC_PASSWORD": "other " + secretMarker + ";"}), vmXML(51, "")))
	if r.code == 0 || !strings.Contains(r.stderr, "does not open repository") || strings.Contains(r.stderr, secretMarker) {
		t.Errorf("wrong password: exit %d, stderr %q", r.code, r.stderr)
	}
}
