package test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Datastore ids 200-230 and VM ids 60-99 (plus 6 and 66) belong to the rsync tests.

var rsyncReplyRe = regexp.MustCompile(`^([0-9a-f]{6}) ([0-9]+) raw\n$`)

// rsyncDS is an rsync datastore on bk1.
func rsyncDS(id int, extra dsAttrs) string {
	attrs := dsAttrs{"RSYNC_HOST": "bk1", "RSYNC_USER": "oneadmin"}
	for k, v := range extra {
		attrs[k] = v
	}
	return datastoreXML(id, "rsync", attrs)
}

// rsyncBackup runs the backup action and returns the 6-hex-char id and the size in MiB.
func (h *harness) rsyncBackup(t testing.TB, ds, host string, vmID int, jobID, bridge string, env ...string) (string, int64) {
	t.Helper()
	out := h.mustDriver(t, "rsync", "backup", backupArgs(host, vmID, jobID), backupStdin(ds, vmXML(vmID, bridge)), env...)
	m := rsyncReplyRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup printed %q, want \"<6 hex> <size_mb> raw\"", out)
	}
	size, _ := strconv.ParseInt(m[2], 10, 64)
	return m[1], size
}

// dirNames lists the names in a directory, sorted ("" entries for a missing directory).
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// allocated is the disk space a file takes (st_blocks), in bytes.
func allocated(t testing.TB, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// checkRsyncBackup verifies <base>/<vm>/<id>/ holds exactly the staged files, byte for byte.
func checkRsyncBackup(t testing.TB, base string, vmID int, id string, st *staged) {
	t.Helper()
	dir := filepath.Join(base, strconv.Itoa(vmID), id)
	got := dirNames(t, dir)
	want := dirNames(t, st.dir)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("%s holds %v, want the staged files %v", dir, got, want)
	}
	for _, name := range want {
		run(t, "cmp", filepath.Join(st.dir, name), filepath.Join(dir, name))
	}
}

// stagedMiB is what backup reports for a staging directory: allocated blocks, rounded up.
func stagedMiB(t testing.TB, dir string) int64 {
	var n int64
	for _, name := range dirNames(t, dir) {
		n += allocated(t, filepath.Join(dir, name))
	}
	return (n + 1<<20 - 1) >> 20
}

// addSparseDisk stages a 256 MiB raw-like file with 2 MiB of data and a big hole.
func addSparseDisk(t testing.TB, st *staged, name string) {
	t.Helper()
	p := filepath.Join(st.dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	f.WriteAt(data, 0)
	f.WriteAt(data, 200<<20)
	if err := f.Truncate(256 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	chownOneadmin(t, st.dir)
}

func TestRsyncBackupTwice(t *testing.T) {
	base := resetDS(t, 200)
	ds := rsyncDS(200, nil)
	st := stageBackup(t, stagingOf(60), 60, 0, []int{64, 8}, 4)
	addSparseDisk(t, st, "disk.2.0")
	id1, size1 := h.rsyncBackup(t, ds, "hv1", 60, "", "")
	checkRsyncBackup(t, base, 60, id1, st)
	if want := stagedMiB(t, st.dir); size1 != want {
		t.Errorf("backup reported %d MiB, want %d (allocated size of the staged files, rounded up)", size1, want)
	}
	src, dst := allocated(t, st.dir+"/disk.2.0"), allocated(t, filepath.Join(base, "60", id1, "disk.2.0"))
	if dst > src+(1<<20) || dst > 16<<20 {
		t.Errorf("sparse disk: %d bytes allocated on the server, %d in the staging dir: the hole was filled", dst, src)
	}

	st2 := stageBackup(t, stagingOf(60), 60, 0, []int{64, 8}, 4)
	id2, _ := h.rsyncBackup(t, ds, "hv1", 60, "", "")
	if id1 == id2 {
		t.Fatalf("two backups gave the same id %s", id1)
	}
	if got := dirNames(t, base+"/60"); len(got) != 2 || !contains(got, id1) || !contains(got, id2) {
		t.Fatalf("%s/60 holds %v, want %s and %s", base, got, id1, id2)
	}
	checkRsyncBackup(t, base, 60, id2, st2)
	if _, err := os.Stat(filepath.Join(base, "60", id1, "disk.2.0")); err != nil {
		t.Errorf("the second backup changed the first: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestRsyncBackupBasePath(t *testing.T) {
	base := resetDS(t, 201)
	remotes := basePathRemotes(t)

	st := stageBackup(t, "/var/lib/one/bkstage/61/backup", 61, 0, []int{16}, 2)
	os.RemoveAll(stagingOf(61))
	id, _ := h.rsyncBackup(t, rsyncDS(201, nil), "hv1", 61, "", "", "ONEBACKUP_REMOTES="+remotes)
	checkRsyncBackup(t, base, 61, id, st)
}

func TestRsyncBackupLastBridge(t *testing.T) {
	base := resetDS(t, 202)
	st := stageBackup(t, stagingOf(62), 62, 0, []int{16}, 1)
	ds := rsyncDS(202, nil)
	// The VM's own host is unreachable: only the bridge can do the upload.
	r := h.driver(t, "rsync", "backup", backupArgs("hv-gone", 62, ""), backupStdin(ds, vmXML(62, "")))
	if r.code == 0 || !strings.Contains(r.stderr, "hv-gone") {
		t.Fatalf("backup through an unreachable host: exit %d, stderr %q", r.code, r.stderr)
	}
	// A Ceph VM is staged on the bridge, which therefore does the upload.
	out := h.mustDriver(t, "rsync", "backup", backupArgs("hv-gone", 62, ""), backupStdin(ds, vmXMLOn(62, "hv2", "ceph")))
	m := rsyncReplyRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("backup through the bridge printed %q", out)
	}
	id := m[1]
	checkRsyncBackup(t, base, 62, id, st)
	if got := dirNames(t, base+"/62"); len(got) != 1 {
		t.Errorf("%s/62 holds %v, want only the bridge's backup %s", base, got, id)
	}
}

func TestRsyncBackupJob(t *testing.T) {
	base := resetDS(t, 203)
	st := stageBackup(t, stagingOf(63), 63, 0, []int{8}, 1)
	// Backup jobs do not change the rsync layout. Verbose rsync output does not disturb the
	// result, and the upload runs under nice/ionice.
	ds := rsyncDS(203, dsAttrs{"RSYNC_ARGS": "-aS -v --stats '--out-format=sent %n' --info=progress2", "RSYNC_NICE": "5", "RSYNC_IONICE": "3"})
	id, _ := h.rsyncBackup(t, ds, "hv1", 63, "7", "")
	checkRsyncBackup(t, base, 63, id, st)
}

func TestRsyncRemove(t *testing.T) {
	base := resetDS(t, 204)
	ds := rsyncDS(204, nil)
	var ids []string
	for i := 0; i < 3; i++ {
		stageBackup(t, stagingOf(64), 64, 0, []int{8}, 1)
		id, _ := h.rsyncBackup(t, ds, "hv1", 64, "", "")
		ids = append(ids, id)
	}
	stageBackup(t, stagingOf(65), 65, 0, []int{8}, 1)
	other, _ := h.rsyncBackup(t, ds, "hv1", 65, "", "")

	img := imageXML(5, 64, "", []inc{{0, ids[0]}, {1, ids[2]}}, "")
	h.mustDriver(t, "rsync", "rm", []string{"5"}, dsMadStdin(img, ds))
	if got := dirNames(t, base+"/64"); len(got) != 1 || got[0] != ids[1] {
		t.Fatalf("after rm of %s and %s, %s/64 holds %v, want only %s", ids[0], ids[2], base, got, ids[1])
	}
	if got := dirNames(t, base+"/65"); len(got) != 1 || got[0] != other {
		t.Fatalf("rm touched another VM's backups: %s/65 holds %v", base, got)
	}
	// Removing again (oned retries a failed rm) succeeds and changes nothing.
	h.mustDriver(t, "rsync", "rm", []string{"5"}, dsMadStdin(img, ds))
	if got := dirNames(t, base+"/64"); len(got) != 1 {
		t.Fatalf("second rm left %v", got)
	}
	// The last backup goes; the VM's directory stays.
	h.mustDriver(t, "rsync", "rm", []string{"6"}, dsMadStdin(imageXML(6, 64, "", []inc{{0, ids[1]}}, ""), ds))
	if got, err := os.ReadDir(base + "/64"); err != nil || len(got) != 0 {
		t.Fatalf("after removing every backup, %s/64: %v %v, want an empty directory", base, got, err)
	}
}

func TestRsyncStat(t *testing.T) {
	resetDS(t, 205)
	ds := rsyncDS(205, nil)
	stageBackup(t, stagingOf(67), 67, 0, []int{64, 24}, 1)
	id, _ := h.rsyncBackup(t, ds, "hv1", 67, "", "")
	for disk, want := range map[int]string{0: "64\n", 1: "24\n"} {
		url := fmt.Sprintf("rsync://205//0:%[1]s/var/lib/one/datastores/205/67/%[1]s/disk.%[2]d.0", id, disk)
		img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH><SIZE>0</SIZE></IMAGE>", url)
		if got := h.mustDriver(t, "rsync", "stat", []string{"9"}, dsMadStdin(img, ds)); got != want {
			t.Errorf("stat of disk %d printed %q, want %q", disk, got, want)
		}
	}
	// Chains: the last item's directory holds the vm.xml; a backup job id changes nothing.
	stageBackup(t, stagingOf(67), 67, 1, []int{32}, 1)
	id2, _ := h.rsyncBackup(t, ds, "hv1", 67, "3", "")
	url := fmt.Sprintf("rsync://205/3/0:%s,1:%s/var/lib/one/datastores/205/67/%s/disk.0.1", id, id2, id2)
	img := fmt.Sprintf("<IMAGE><PATH><![CDATA[%s]]></PATH><BACKUP_JOB_ID>3</BACKUP_JOB_ID></IMAGE>", url)
	if got := h.mustDriver(t, "rsync", "stat", []string{"9"}, dsMadStdin(img, ds)); got != "32\n" {
		t.Errorf("stat of an increment printed %q, want 32", got)
	}
}

func TestRsyncMonitor(t *testing.T) {
	base := resetDS(t, 206)
	out := h.mustDriver(t, "rsync", "monitor", []string{"206"}, dsMadStdin(rsyncDS(206, nil)))
	checkMonitor(t, out, base)
	// A missing BASE_PATH is created on the rsync host.
	os.RemoveAll(base)
	out = h.mustDriver(t, "rsync", "monitor", []string{"206"}, dsMadStdin(rsyncDS(206, nil)))
	checkMonitor(t, out, "/var/lib/one/datastores")
	if _, err := os.Stat(base); err != nil {
		t.Errorf("monitor did not create %s: %v", base, err)
	}
}

func TestRsyncLs(t *testing.T) {
	resetDS(t, 207)
	ds := rsyncDS(207, nil)
	stageBackup(t, stagingOf(68), 68, 0, []int{8, 8}, 1)
	id0, _ := h.rsyncBackup(t, ds, "hv1", 68, "", "")
	st := stageBackup(t, stagingOf(68), 68, 1, []int{8, 8}, 1)
	os.WriteFile(st.dir+"/disk.tpm.0", []byte("tpm state"), 0o644)
	chownOneadmin(t, st.dir)
	id1, _ := h.rsyncBackup(t, ds, "hv1", 68, "", "")
	img := imageXML(8, 68, "", []inc{{0, id0}, {1, id1}}, "")
	stdin := backupStdin(ds, vmXML(68, "")+img)
	dir := "/var/lib/one/datastores/207/68/"

	got := h.mustDriver(t, "rsync", "ls", []string{"-i", "-1"}, stdin)
	chain := fmt.Sprintf("0:%s,1:%s", id0, id1)
	want := fmt.Sprintf(`{"0":"rsync://207//%[1]s%[2]s%[3]s/disk.0.1","1":"rsync://207//%[1]s%[2]s%[3]s/disk.1.1","tpm":"rsync://207//%[1]s%[2]s%[3]s/disk.tpm.0"}`+"\n", chain, dir, id1)
	if got != want {
		t.Errorf("ls -i -1:\n got %s want %s", got, want)
	}
	got = h.mustDriver(t, "rsync", "ls", []string{"-i", "0"}, stdin)
	want = fmt.Sprintf(`{"0":"rsync://207//0:%[1]s%[2]s%[1]s/disk.0.0","1":"rsync://207//0:%[1]s%[2]s%[1]s/disk.1.0"}`+"\n", id0, dir)
	if got != want {
		t.Errorf("ls -i 0:\n got %s want %s", got, want)
	}
	// A backup job appears in the URLs.
	img = imageXML(8, 68, "4", []inc{{0, id0}}, "")
	got = h.mustDriver(t, "rsync", "ls", nil, backupStdin(ds, vmXML(68, "")+img))
	want = fmt.Sprintf(`{"0":"rsync://207/4/0:%[1]s%[2]s%[1]s/disk.0.0","1":"rsync://207/4/0:%[1]s%[2]s%[1]s/disk.1.0"}`+"\n", id0, dir)
	if got != want {
		t.Errorf("ls of a backup job image:\n got %s want %s", got, want)
	}
}

// failureLines are the stderr lines oned turns into the failure message: all but the
// "INFO:"/"ERROR:"/… log lines, which it forwards as log messages.
func failureLines(stderr string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if !regexp.MustCompile(`^(ERROR|INFO|WARN|DEBUG):\s`).MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// oneFailure tells whether stderr holds exactly one failure line and it says want.
func oneFailure(stderr, want string) bool {
	lines := failureLines(stderr)
	return len(lines) == 1 && strings.Contains(lines[0], want)
}

// waitGone polls until no process matches, and fails the test with what is left.
func waitGone(t *testing.T, what string, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		left := processesMatching(subs...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still running: %v", what, left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cancelDuringBackup starts slow backups of VMs 6 and 66, cancels the one of VM 6 with stop()
// once its rsync runs, and checks the cancellation guarantees.
func cancelDuringBackup(t *testing.T, dsID int, stop func(drv *os.Process)) {
	base := resetDS(t, dsID)
	ds := rsyncDS(dsID, dsAttrs{"RSYNC_ARGS": "-aS --bwlimit=256"})
	stageBackup(t, stagingOf(6), 6, 0, []int{16}, 6)
	st66 := stageBackup(t, stagingOf(66), 66, 0, []int{16}, 2)

	start := func(vmID int) (*osProc, *bytes.Buffer, *bytes.Buffer) {
		cmd := h.driverCmd(t, "rsync", "backup", backupArgs("hv1", vmID, ""), backupStdin(ds, vmXML(vmID, "")))
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &osProc{done: make(chan struct{})}
		p.proc = cmd.Process
		go func() { cmd.Wait(); p.code = cmd.ProcessState.ExitCode(); close(p.done) }()
		t.Cleanup(func() { p.proc.Kill(); <-p.done })
		return p, &out, &errb
	}
	b6, _, err6 := start(6)
	b66, out66, err66 := start(66)

	// Wait until VM 6's upload is running on hv1 and its destination exists on bk1.
	staging6 := stagingOf(6) + "/"
	deadline := time.Now().Add(20 * time.Second)
	for len(processesMatching("rsync", staging6)) == 0 || len(dirNames(t, base+"/6")) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the upload of VM 6 did not start: %s", err6.String())
		}
		select {
		case <-b6.done:
			t.Fatalf("backup of VM 6 ended early (exit %d): %s", b6.code, err6.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	time.Sleep(time.Second) // some data is written
	partial := dirNames(t, base+"/6")

	began := time.Now()
	stop(b6.proc)
	select {
	case <-b6.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("backup of VM 6 still running 30 s after the cancel")
	}
	if took := time.Since(began); took > 15*time.Second {
		t.Errorf("cancelling took %s", took)
	}
	if b6.code == 0 {
		t.Fatalf("cancelled backup exited 0")
	}
	if lines := failureLines(err6.String()); len(lines) != 1 || !strings.Contains(lines[0], "cancel") {
		t.Errorf("cancelled backup's stderr %q: want one line saying it was cancelled", err6.String())
	}
	waitGone(t, "rsync of VM 6 on hv1", "rsync", staging6)
	waitGone(t, "rsync of VM 6 on bk1", "rsync", fmt.Sprintf("/datastores/%d/6/", dsID))
	if got := dirNames(t, base+"/6"); len(got) != 0 {
		t.Errorf("partial backup %v left in %s/6 (was %v)", got, base, partial)
	}

	// VM 66's backup (its paths have VM 6's as a prefix) was not disturbed.
	<-b66.done
	if b66.code != 0 {
		t.Fatalf("concurrent backup of VM 66 failed (exit %d): %s", b66.code, err66.String())
	}
	m := rsyncReplyRe.FindStringSubmatch(out66.String())
	if m == nil {
		t.Fatalf("backup of VM 66 printed %q", out66.String())
	}
	checkRsyncBackup(t, base, 66, m[1], st66)

	// The next backup of VM 6 works.
	st6 := stageBackup(t, stagingOf(6), 6, 0, []int{8}, 1)
	id, _ := h.rsyncBackup(t, ds, "hv1", 6, "", "")
	checkRsyncBackup(t, base, 6, id, st6)
}

type osProc struct {
	proc *os.Process
	code int
	done chan struct{}
}

func TestRsyncCancelSIGTERM(t *testing.T) {
	cancelDuringBackup(t, 208, func(p *os.Process) { p.Signal(syscall.SIGTERM) })
}

func TestRsyncCancelAction(t *testing.T) {
	cancelDuringBackup(t, 209, func(*os.Process) {
		// oned's VMM driver: backup_cancel host:vm_dir deploy_id, the bare VM XML on stdin.
		h.mustDriver(t, "rsync", "backup_cancel", []string{"hv1:" + vmDir(6), "one-6"}, []byte(vmXML(6, "")))
	})
	// Nothing running: cancelling again succeeds.
	h.mustDriver(t, "rsync", "backup_cancel", []string{"hv1:" + vmDir(6), "one-6"}, []byte(vmXML(6, "")))
}

func TestRsyncRemoteErrors(t *testing.T) {
	stageBackup(t, stagingOf(70), 70, 0, []int{8}, 1)
	for _, tc := range []struct {
		name  string
		attrs dsAttrs
		want  string
	}{
		{"unknown host", dsAttrs{"RSYNC_HOST": "bk-gone"}, "unknown host"},
		{"port closed", dsAttrs{"RSYNC_HOST": "127.0.0.1"}, "host unreachable"},
		{"auth refused", dsAttrs{"RSYNC_USER": "root"}, "authentication refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := resetDS(t, 210)
			ds := rsyncDS(210, tc.attrs)
			r := h.driver(t, "rsync", "monitor", []string{"210"}, dsMadStdin(ds))
			if r.code == 0 || r.stdout != "" || !oneFailure(r.stderr, tc.want) {
				t.Errorf("monitor: exit %d, stdout %q, stderr %q: want a failure saying %q", r.code, r.stdout, r.stderr, tc.want)
			}
			r = h.driver(t, "rsync", "backup", backupArgs("hv1", 70, ""), backupStdin(ds, vmXML(70, "")))
			if r.code == 0 || !oneFailure(r.stderr, tc.want) {
				t.Errorf("backup: exit %d, stderr %q: want a failure saying %q", r.code, r.stderr, tc.want)
			}
			if got := dirNames(t, base); len(got) != 0 {
				t.Errorf("failed backup left %v in %s", got, base)
			}
		})
	}

	t.Run("destination full", func(t *testing.T) {
		base := resetDS(t, 211)
		run(t, "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", base)
		t.Cleanup(func() { run(t, "umount", "-l", base) })
		chownOneadmin(t, base)
		stageBackup(t, stagingOf(71), 71, 0, []int{32}, 24)
		ds := rsyncDS(211, nil)
		r := h.driver(t, "rsync", "backup", backupArgs("hv1", 71, ""), backupStdin(ds, vmXML(71, "")))
		if r.code == 0 || !oneFailure(r.stderr, "destination full") {
			t.Fatalf("backup to a full disk: exit %d, stderr %q: want one line saying the destination is full", r.code, r.stderr)
		}
		if got := dirNames(t, base+"/71"); len(got) != 0 {
			t.Errorf("failed backup left %v in %s/71", got, base)
		}
		// Space is back: a small backup fits.
		st := stageBackup(t, stagingOf(71), 71, 0, []int{8}, 1)
		id, _ := h.rsyncBackup(t, ds, "hv1", 71, "", "")
		checkRsyncBackup(t, base, 71, id, st)
	})
}
