package test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"onebackup/internal/oned/onedtest"
)

// FS_FREEZE=AGENT on a VM without a guest agent: the backup fails (never a silent unfrozen
// success), the VM keeps running on its chain; FS_FREEZE=NONE succeeds.
func TestKVMFileFreezeAgentFails(t *testing.T) {
	env := needKVM(t)
	vm := newVM(t, env, 560, &tdisk{id: 0, format: "qcow2", sizeMiB: 16})
	vm.start(t)
	c := bcfg{mode: "INCREMENT", li: -1, incMode: "CBT", live: true, freeze: "AGENT", disks: "0"}
	r := env.tm(t, "qcow2", "prebackup_live", vm.tmArgs("0"), vm.xml(c))
	if r.code == 0 || !strings.Contains(r.stderr, "FS_FREEZE=AGENT failed") {
		t.Fatalf("freeze without an agent: exit %d: %s", r.code, r.stderr)
	}
	c.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
	env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(c))
	vm.checkClean(t)
	if cps := vm.checkpoints(t); len(cps) != 0 {
		t.Errorf("failed freeze left checkpoints %v", cps)
	}
}

// vTPM state is staged as disk.tpm.0 (tar.gz of tpm/), and BACKUP_BASE_PATH moves the staging
// out of the VM directory; both through the TM actions and the datastore backup action.
func TestKVMFileTPMAndBasePath(t *testing.T) {
	env := needKVM(t)
	vid := 570
	base := resetDS(t, 423)
	ds := resticDS(423, nil)
	remotes := basePathRemotes(t)

	os.MkdirAll("/var/lib/one/bkstage", 0o755)
	chownOneadmin(t, "/var/lib/one/bkstage")
	vm := newVM(t, env, vid, &tdisk{id: 0, format: "qcow2", sizeMiB: 16})
	vm.staging = fmt.Sprintf("/var/lib/one/bkstage/%d/backup", vid)
	vm.env2 = []string{"ONEBACKUP_REMOTES=" + remotes}
	os.MkdirAll(vm.dir+"/tpm", 0o755)
	os.WriteFile(vm.dir+"/tpm/tpm2-00.permall", []byte("tpm state of 570"), 0o600)
	chownOneadmin(t, vm.dir)
	vm.start(t)
	vm.write(t, 0, 0x91, 0, 1<<20)
	want := vm.expect(t, "0")
	vm.onStaged = func() {
		if _, err := os.Stat(vm.staging + "/disk.0.0"); err != nil {
			t.Errorf("nothing staged under BACKUP_BASE_PATH: %v", err)
		}
		if _, err := os.Stat(vm.dir + "/backup"); err == nil {
			t.Errorf("staged in the VM dir although BACKUP_BASE_PATH is set")
		}
	}
	id := vm.backupRound(t, ds, bcfg{mode: "FULL", li: -1, live: true, tpm: true})
	if _, err := os.Stat(filepath.Dir(vm.staging)); err == nil {
		t.Errorf("postbackup left %s", filepath.Dir(vm.staging))
	}
	repo := fmt.Sprintf("%s/%d", base, vid)
	vm.restoreCompare(t, repo, []string{id}, 0, want[0])
	tgz := h.restic(t, repo, "dump", "--quiet", id, vm.staging+"/disk.tpm.0")
	zr, err := gzip.NewReader(bytes.NewReader([]byte(tgz)))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	found := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(hdr.Name, "tpm/") {
			t.Errorf("member %s does not start with tpm/", hdr.Name)
		}
		if hdr.Name == "tpm/tpm2-00.permall" {
			data, _ := io.ReadAll(tr)
			found = string(data) == "tpm state of 570"
		}
	}
	if !found {
		t.Error("disk.tpm.0 does not hold tpm/tpm2-00.permall")
	}
}

// The same host work by hand: a dry run resolves and prints the plan, changing nothing.
func TestKVMHostDryRun(t *testing.T) {
	env := needKVM(t)
	vm := newVM(t, env, 580, &tdisk{id: 0, format: "qcow2", sizeMiB: 16}, &tdisk{id: 1, format: "raw", sizeMiB: 16})
	vm.start(t)
	f := filepath.Join(h.state, "vm-580.xml")
	os.WriteFile(f, vm.xml(bcfg{mode: "FULL", li: -1, live: true}), 0o644)
	defer os.Remove(f)
	out := h.asOneadmin(t, nil, hostBinPath, "host", "backup", "--vm-xml", f, "--disks", "0:1", "--live", "--dry-run")
	for _, w := range []string{"KVM file qcow2 full live", "disk 0 (vda, qcow2)", "disk 1 (vdb, raw)"} {
		if !strings.Contains(out, w) {
			t.Errorf("dry run output lacks %q:\n%s", w, out)
		}
	}
	vm.checkClean(t)
}

// The backup datastore's RESTIC_NICE / RESTIC_IONICE (loaded from oned by the frontend's TM
// action, LAST_DATASTORE_ID) confine the host-side work.
func TestKVMFileConfinement(t *testing.T) {
	env := needKVM(t)
	vm := newVM(t, env, 585, &tdisk{id: 0, format: "qcow2", sizeMiB: 16})
	vm.start(t)
	srv := onedtest.New(func(c onedtest.Call) onedtest.Reply {
		if c.Method == "one.datastore.info" && c.Int(1) == 424 {
			return onedtest.OK(resticDS(424, dsAttrs{"RESTIC_NICE": "13", "RESTIC_IONICE": "6"}))
		}
		return onedtest.Fail("unexpected " + c.Method)
	})
	defer srv.Close()
	dir := filepath.Join(h.state, "one-585")
	os.MkdirAll(dir, 0o755)
	defer os.RemoveAll(dir)
	os.WriteFile(dir+"/one_auth", []byte("oneadmin:secret\n"), 0o600)
	chownOneadmin(t, dir)
	c := bcfg{mode: "FULL", li: -1, live: true, disks: "0", lastDS: 424}
	cmd := env.tmCmd(t, "qcow2", "prebackup_live", vm.tmArgs("0"), vm.xml(c),
		"ONE_XMLRPC="+srv.URL+"/RPC2", "ONE_AUTH="+dir+"/one_auth", "ONEBACKUP_TEST_HOLD=export")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(vm.dir, "tmp", "hold.export"), cmd, &errb)
	procs := processesMatching(hostBinPath, "host backup", vm.dir)
	if len(procs) != 1 {
		t.Fatalf("host processes: %v", procs)
	}
	pid := strings.SplitN(procs[0], ":", 2)[0]
	stat, _ := os.ReadFile("/proc/" + pid + "/stat")
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	if f[16] != "13" { // field 19: nice
		t.Errorf("host side runs at nice %s, want 13", f[16])
	}
	if out := run(t, "ionice", "-p", pid); !strings.Contains(out, "best-effort: prio 6") {
		t.Errorf("host side I/O class %q, want best-effort prio 6", out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	c.extraXML = "<BACKUP_RESULT>FAILURE</BACKUP_RESULT>"
	env.tm(t, "qcow2", "postbackup_live", vm.tmArgs("0"), vm.xml(c))
	vm.waitUnlocked(t)
	vm.checkClean(t)
}
