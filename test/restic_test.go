package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"onebackup/internal/remote"
)

// secretMarker is the part of the test passwords no other process on the machine can contain,
// so tests can look for it in every command line and every output.
const secretMarker = "$obSecret7c41"

const resticPassword = `p'a"ss ` + secretMarker + `;` + "\n" + ` x` // hostile on purpose: quotes, $, ;, newline, spaces

var backupReplyRe = regexp.MustCompile(`^([0-9a-f]{8}) ([0-9]+) raw\n$`)

// resticDS is a restic datastore on bk1.
func resticDS(id int, extra dsAttrs) string {
	attrs := dsAttrs{"RESTIC_PASSWORD": resticPassword, "RESTIC_SFTP_SERVER": "bk1"}
	for k, v := range extra {
		attrs[k] = v
	}
	return datastoreXML(id, "restic", attrs)
}

// resetDS empties a datastore's directory on the backup server.
func resetDS(t testing.TB, id int) string {
	dir := fmt.Sprintf("/var/lib/one/datastores/%d", id)
	os.RemoveAll(dir)
	os.MkdirAll(dir, 0o755)
	chownOneadmin(t, dir)
	return dir
}

type resticSnapshot struct {
	ID    string   `json:"id"`
	Time  string   `json:"time"`
	Paths []string `json:"paths"`
	Tags  []string `json:"tags"`
}

// restic runs the frontend's restic as oneadmin against a repository: a path on bk1, or an
// s3: address on one of the S3 test servers.
func (h *harness) restic(t testing.TB, repoPath string, args ...string) string {
	t.Helper()
	argv := []string{"/var/lib/one/remotes/datastore/restic/restic", "--repo=sftp:oneadmin@bk1:" + repoPath}
	env := []string{"RESTIC_PASSWORD=" + resticPassword}
	for _, s := range s3List {
		if strings.HasPrefix(repoPath, "s3:"+s.endpoint+"/") {
			argv = append(append(argv[:1], s.flags()...), "--repo="+repoPath)
			env = s.env()
		}
	}
	return h.asOneadmin(t, env, append(argv, args...)...)
}

func (h *harness) snapshots(t testing.TB, repoPath string) []resticSnapshot {
	t.Helper()
	var out []resticSnapshot
	if err := json.Unmarshal([]byte(h.restic(t, repoPath, "snapshots", "--no-lock", "--json")), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// resticBackup runs the backup action and returns the 8-char id.
func (h *harness) resticBackup(t testing.TB, ds string, host string, vmID int, jobID, bridge string, env ...string) string {
	t.Helper()
	out := h.mustDriver(t, "restic", "backup", backupArgs(host, vmID, jobID), backupStdin(ds, vmXML(vmID, bridge)), env...)
	m := backupReplyRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup printed %q, want \"<8 hex> <size_mb> raw\"", out)
	}
	return m[1]
}

// checkSnapshot verifies a snapshot holds exactly the staged files, byte for byte.
func (h *harness) checkSnapshot(t testing.TB, repoPath, id string, vmID int, st *staged) {
	t.Helper()
	var snap *resticSnapshot
	for _, s := range h.snapshots(t, repoPath) {
		if strings.HasPrefix(s.ID, id) {
			snap = &s
		}
	}
	if snap == nil {
		t.Fatalf("no snapshot %s in %s", id, repoPath)
	}
	if len(snap.Tags) != 1 || snap.Tags[0] != "one-"+strconv.Itoa(vmID) {
		t.Errorf("snapshot tags %v, want [one-%d]", snap.Tags, vmID)
	}
	if len(snap.Paths) != len(st.files) {
		t.Errorf("snapshot paths %v, want the %d staged files", snap.Paths, len(st.files))
	}
	suffix := fmt.Sprintf("/%d/backup/", vmID)
	for _, p := range snap.Paths {
		name := filepath.Base(p)
		if !strings.HasSuffix(filepath.Dir(p)+"/", suffix) || st.files[name] == nil {
			t.Errorf("snapshot path %s does not end in %s<staged file>", p, suffix)
			continue
		}
		got := h.restic(t, repoPath, "dump", "--quiet", id, p)
		if got != string(st.files[name]) {
			t.Errorf("%s in snapshot %s differs from the staged file", p, id)
		}
		if strings.HasPrefix(name, "disk.") {
			restored := filepath.Join(t.TempDir(), name)
			os.WriteFile(restored, []byte(got), 0o644)
			run(t, "qemu-img", "compare", "-q", restored, filepath.Join(st.dir, name))
		}
	}
}

func TestResticBackupTwice(t *testing.T) {
	base := resetDS(t, 110)
	ds := resticDS(110, nil)
	st1 := stageBackup(t, stagingOf(42), 42, 0, []int{64, 8}, 4)
	id1 := h.resticBackup(t, ds, "hv1", 42, "", "")
	h.checkSnapshot(t, base+"/42", id1, 42, st1)

	st2 := stageBackup(t, stagingOf(42), 42, 0, []int{64, 8}, 4)
	id2 := h.resticBackup(t, ds, "hv1", 42, "", "")
	if id1 == id2 {
		t.Fatalf("two backups gave the same id %s", id1)
	}
	snaps := h.snapshots(t, base+"/42")
	if len(snaps) != 2 || snaps[0].ID[:8] != id1 || snaps[1].ID[:8] != id2 {
		t.Fatalf("repository holds %+v, want snapshots %s and %s", snaps, id1, id2)
	}
	h.checkSnapshot(t, base+"/42", id2, 42, st2)
}

func TestResticBackupJobRepository(t *testing.T) {
	base := resetDS(t, 111)
	st := stageBackup(t, stagingOf(43), 43, 0, []int{16}, 2)
	id := h.resticBackup(t, resticDS(111, nil), "hv1", 43, "7", "")
	if _, err := os.Stat(base + "/job_7/config"); err != nil {
		t.Fatalf("backup job repository not created: %v", err)
	}
	if _, err := os.Stat(base + "/43"); err == nil {
		t.Fatalf("a per-VM repository was created for a backup job")
	}
	h.checkSnapshot(t, base+"/job_7", id, 43, st)
}

func TestResticBackupBasePath(t *testing.T) {
	base := resetDS(t, 112)
	remotes := basePathRemotes(t)

	st := stageBackup(t, "/var/lib/one/bkstage/44/backup", 44, 0, []int{16}, 2)
	os.RemoveAll(stagingOf(44))
	id := h.resticBackup(t, resticDS(112, nil), "hv1", 44, "", "", "ONEBACKUP_REMOTES="+remotes)
	h.checkSnapshot(t, base+"/44", id, 44, st)
}

// An SFTP server that cannot be reached: backup and monitor fail with one line saying why.
func TestResticUnknownServer(t *testing.T) {
	stageBackup(t, stagingOf(92), 92, 0, []int{8}, 1)
	ds := resticDS(142, dsAttrs{"RESTIC_SFTP_SERVER": "bk-gone"})
	r := h.driver(t, "restic", "backup", backupArgs("hv1", 92, ""), backupStdin(ds, vmXML(92, "")))
	if r.code == 0 || !oneFailure(r.stderr, "restic on the frontend could not connect onwards: unknown host") {
		t.Errorf("backup: exit %d, stderr %q", r.code, r.stderr)
	}
	r = h.driver(t, "restic", "monitor", []string{"142"}, dsMadStdin(ds))
	if r.code == 0 || r.stdout != "" || !oneFailure(r.stderr, "ssh to oneadmin@bk-gone failed: unknown host") {
		t.Errorf("monitor: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestResticBackupLastBridge(t *testing.T) {
	resetDS(t, 113)
	stageBackup(t, stagingOf(45), 45, 0, []int{16}, 1)
	ds := resticDS(113, nil)
	// The VM's own host is unreachable: only the bridge can do the upload.
	r := h.driver(t, "restic", "backup", backupArgs("hv-gone", 45, ""), backupStdin(ds, vmXML(45, "")))
	if r.code == 0 || !strings.Contains(r.stderr, "hv-gone") {
		t.Fatalf("backup through an unreachable host: exit %d, stderr %q", r.code, r.stderr)
	}
	// A Ceph VM is staged on the bridge, which therefore does the upload.
	out := h.mustDriver(t, "restic", "backup", backupArgs("hv-gone", 45, ""), backupStdin(ds, vmXMLOn(45, "hv2", "ceph")))
	if !backupReplyRe.MatchString(out) {
		t.Fatalf("backup through the bridge printed %q", out)
	}
	// A VM on a file system datastore is staged on its own host: the bridge is not used (W-16).
	r = h.driver(t, "restic", "backup", backupArgs("hv1", 45, ""), backupStdin(ds, vmXMLOn(45, "hv-gone", "qcow2")))
	if r.code != 0 || !strings.Contains(r.stderr, "LAST_BRIDGE hv-gone not used") {
		t.Fatalf("file VM with a bridge: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestResticRemove(t *testing.T) {
	base := resetDS(t, 114)
	ds := resticDS(114, nil)
	var ids []string
	for i := 0; i < 3; i++ {
		stageBackup(t, stagingOf(46), 46, 0, []int{8}, 1)
		ids = append(ids, h.resticBackup(t, ds, "hv1", 46, "", ""))
	}
	img := imageXML(5, 46, "", []inc{{0, ids[0]}, {1, ids[2]}}, "")
	h.mustDriver(t, "restic", "rm", []string{"5"}, dsMadStdin(img, ds))
	snaps := h.snapshots(t, base+"/46")
	if len(snaps) != 1 || snaps[0].ID[:8] != ids[1] {
		t.Fatalf("after rm of %s and %s the repository holds %+v, want only %s", ids[0], ids[2], snaps, ids[1])
	}
	// Removing again (oned retries a failed rm) succeeds and changes nothing.
	h.mustDriver(t, "restic", "rm", []string{"5"}, dsMadStdin(img, ds))
	if n := len(h.snapshots(t, base+"/46")); n != 1 {
		t.Fatalf("second rm left %d snapshots", n)
	}
}

func TestResticStat(t *testing.T) {
	resetDS(t, 115)
	ds := resticDS(115, nil)
	stageBackup(t, stagingOf(47), 47, 0, []int{64, 24}, 1)
	id := h.resticBackup(t, ds, "hv1", 47, "", "")
	for disk, want := range map[int]string{0: "64\n", 1: "24\n"} {
		url := fmt.Sprintf("restic://115//0:%s/var/lib/one/datastores/0/47/backup/disk.%d.0", id, disk)
		img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH><SIZE>0</SIZE></IMAGE>", url)
		if got := h.mustDriver(t, "restic", "stat", []string{"9"}, dsMadStdin(img, ds)); got != want {
			t.Errorf("stat of disk %d printed %q, want %q", disk, got, want)
		}
	}
	// A backup job's repository is named by IMAGE/BACKUP_JOB_ID.
	stageBackup(t, stagingOf(47), 47, 0, []int{32}, 1)
	id = h.resticBackup(t, ds, "hv1", 47, "3", "")
	url := fmt.Sprintf("restic://115/3/0:%s/var/lib/one/datastores/0/47/backup/disk.0.0", id)
	img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH><BACKUP_JOB_ID>3</BACKUP_JOB_ID></IMAGE>", url)
	if got := h.mustDriver(t, "restic", "stat", []string{"9"}, dsMadStdin(img, ds)); got != "32\n" {
		t.Errorf("stat in a backup job repository printed %q, want 32", got)
	}
}

func TestResticMonitor(t *testing.T) {
	base := resetDS(t, 116)
	out := h.mustDriver(t, "restic", "monitor", []string{"116"}, dsMadStdin(resticDS(116, nil)))
	checkMonitor(t, out, base)
}

// checkMonitor compares monitor's output with df on the backup server's directory.
func checkMonitor(t *testing.T, out, dir string) {
	t.Helper()
	m := regexp.MustCompile(`^USED_MB=([0-9]+)\nTOTAL_MB=([0-9]+)\nFREE_MB=([0-9]+)\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("monitor printed %q, want three lines of integers", out)
	}
	f := strings.Fields(strings.Split(strings.TrimSpace(run(t, "df", "-Pk", dir)), "\n")[1])
	for i, field := range []int{2, 1, 3} { // USED, TOTAL, FREE from df's used, size, available
		kib, _ := strconv.ParseInt(f[field], 10, 64)
		got, _ := strconv.ParseInt(m[i+1], 10, 64)
		if d := got - kib>>10; d < -64 || d > 64 { // the filesystem moves a little between the two reads
			t.Errorf("monitor value %d MiB, df says %d MiB", got, kib>>10)
		}
	}
}

func TestResticLs(t *testing.T) {
	resetDS(t, 117)
	ds := resticDS(117, nil)
	stageBackup(t, stagingOf(48), 48, 0, []int{8, 8}, 1)
	id0 := h.resticBackup(t, ds, "hv1", 48, "", "")
	st := stageBackup(t, stagingOf(48), 48, 1, []int{8, 8}, 1)
	os.WriteFile(st.dir+"/disk.tpm.0", []byte("tpm state"), 0o644)
	chownOneadmin(t, st.dir)
	id1 := h.resticBackup(t, ds, "hv1", 48, "", "")
	img := imageXML(8, 48, "", []inc{{0, id0}, {1, id1}}, "")
	stdin := backupStdin(ds, vmXML(48, "")+img)
	prefix := "/var/lib/one/datastores/0/48/backup/"

	got := h.mustDriver(t, "restic", "ls", []string{"-i", "-1"}, stdin)
	chain := fmt.Sprintf("0:%s,1:%s", id0, id1)
	want := fmt.Sprintf(`{"0":"restic://117//%[1]s%[2]sdisk.0.1","1":"restic://117//%[1]s%[2]sdisk.1.1","tpm":"restic://117//%[1]s%[2]sdisk.tpm.0"}`+"\n", chain, prefix)
	if got != want {
		t.Errorf("ls -i -1:\n got %s want %s", got, want)
	}
	got = h.mustDriver(t, "restic", "ls", []string{"-i", "0"}, stdin)
	want = fmt.Sprintf(`{"0":"restic://117//0:%[1]s%[2]sdisk.0.0","1":"restic://117//0:%[1]s%[2]sdisk.1.0"}`+"\n", id0, prefix)
	if got != want {
		t.Errorf("ls -i 0:\n got %s want %s", got, want)
	}
}

func parseTime(s string) (time.Time, error) { return time.Parse(time.RFC3339Nano, s) }

// TestResticConfinement checks that RESTIC_NICE / RESTIC_IONICE apply to the upload on the host.
func TestResticConfinement(t *testing.T) {
	resetDS(t, 130)
	stageBackup(t, stagingOf(64), 64, 0, []int{32}, 12)
	ds := resticDS(130, dsAttrs{"RESTIC_NICE": "7", "RESTIC_IONICE": "5", "RESTIC_BWLIMIT": "2048"})
	cmd, out, done := h.startBackup(t, "restic", ds, 64)
	defer cmd.Process.Kill()
	var pid int
	waitFor(t, "the upload of VM 64", 60*time.Second, func() bool {
		for p, cl := range procCmdlines() {
			if strings.Contains(cl, "restic") && strings.Contains(cl, "/datastores/0/64/backup") && !strings.HasPrefix(cl, "nice") {
				pid = p
				return true
			}
		}
		return false
	})
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if fields[16] != "7" {
		t.Errorf("restic runs with nice %s, want 7", fields[16])
	}
	if got := run(t, "ionice", "-p", strconv.Itoa(pid)); !strings.Contains(got, "best-effort: prio 5") {
		t.Errorf("restic runs with ionice %q, want best-effort prio 5", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("confined backup failed: %v: %s", err, out)
	}
}

// TestResticProgressOnTerminal: a person running backup on a terminal sees a progress bar drawn
// from restic's status messages; oned (no terminal) never gets one.
func TestResticProgressOnTerminal(t *testing.T) {
	resetDS(t, 131)
	stageBackup(t, stagingOf(65), 65, 0, []int{32}, 8)
	ds := resticDS(131, dsAttrs{"RESTIC_BWLIMIT": "4096"})
	xml := "/var/lib/one/progress-test.xml"
	os.WriteFile(xml, backupStdin(ds, vmXML(65, "")), 0o600)
	chownOneadmin(t, xml)
	defer os.Remove(xml)
	line, _ := remoteQuote(append([]string{filepath.Join(h.repo, "drivers/restic/backup"), "--xml", xml}, backupArgs("hv1", 65, "")...))
	out := h.asOneadmin(t, nil, "script", "-qec", line, "/dev/null")
	if !strings.Contains(out, "\r[") || !strings.Contains(out, "%") || !backupReplyRe.MatchString(lastLine(out)) {
		t.Errorf("terminal run printed no progress bar or no reply: %q", out)
	}
	r := h.driver(t, "restic", "backup", backupArgs("hv1", 65, ""), backupStdin(ds, vmXML(65, "")))
	if r.code != 0 || strings.Contains(r.stderr+r.stdout, "\r[") {
		t.Errorf("oned-style run: exit %d, output %q %q", r.code, r.stdout, r.stderr)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(strings.ReplaceAll(s, "\r\n", "\n"), "\n"), "\n")
	return lines[len(lines)-1] + "\n"
}

var remoteQuote = remote.Quote
