package test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// oneadmin is the uid/gid the drivers run as, as on a real frontend.
func oneadmin(t testing.TB) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup("oneadmin")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// driverEnv is the environment oned's drivers get on a frontend.
func (h *harness) driverEnv(extra ...string) []string {
	return append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"HOME=/var/lib/one",
		"USER=oneadmin",
		"LANG=C",
		"SSH_AUTH_SOCK=" + h.authSock,
		"ONEBACKUP_RUN_DIR=" + h.runDir,
	}, extra...)
}

// result is what a driver run left.
type result struct {
	stdout, stderr string
	code           int
}

// driverAt runs an executable of the checkout (such as a downloader) as oneadmin.
func (h *harness) driverAt(t testing.TB, path string, args []string, stdin []byte, env ...string) result {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = h.driverEnv(env...)
	cmd.Dir = "/var/lib/one"
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	return result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

// driverCmd prepares drivers/<backend>/<action> exactly as oned runs it: argv, stdin, oneadmin.
func (h *harness) driverCmd(t testing.TB, backend, action string, args []string, stdin []byte, env ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(h.repo, "drivers", backend, action), args...)
	cmd.Env = h.driverEnv(env...)
	cmd.Dir = "/var/lib/one"
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	return cmd
}

// driver runs an action and waits for it.
func (h *harness) driver(t testing.TB, backend, action string, args []string, stdin []byte, env ...string) result {
	t.Helper()
	cmd := h.driverCmd(t, backend, action, args, stdin, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
	if err != nil && r.code <= 0 {
		t.Fatalf("%s %s: %v: %s", backend, action, err, r.stderr)
	}
	return r
}

// mustDriver runs an action that must succeed.
func (h *harness) mustDriver(t testing.TB, backend, action string, args []string, stdin []byte, env ...string) string {
	t.Helper()
	r := h.driver(t, backend, action, args, stdin, env...)
	if r.code != 0 {
		t.Fatalf("%s %s %v failed (exit %d): %s", backend, action, args, r.code, r.stderr)
	}
	return r.stdout
}

// asOneadmin runs a command as oneadmin with the frontend's environment and returns stdout.
func (h *harness) asOneadmin(t testing.TB, env []string, argv ...string) string {
	t.Helper()
	r := h.asOneadminResult(t, env, argv...)
	if r.code != 0 {
		t.Fatalf("%s: exit %d: %s", strings.Join(argv, " "), r.code, r.stderr)
	}
	return r.stdout
}

// asOneadminResult runs a command as oneadmin with the frontend's environment.
func (h *harness) asOneadminResult(t testing.TB, env []string, argv ...string) result {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = h.driverEnv(env...)
	cmd.Dir = "/var/lib/one"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil && cmd.ProcessState == nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

// run runs a command as root and fails the test on error.
func run(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// chownOneadmin gives a tree to oneadmin.
func chownOneadmin(t testing.TB, path string) {
	t.Helper()
	run(t, "chown", "-R", "oneadmin:oneadmin", path)
}

// --- fixtures: the XML oned sends, written from the spec ---------------------------------

// dsAttrs are template attributes of a backup datastore.
type dsAttrs map[string]string

// datastoreXML is a DATASTORE element as one.datastore.info (decrypted) renders it.
func datastoreXML(id int, mad string, attrs dsAttrs) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<DATASTORE><ID>%d</ID><UID>0</UID><NAME>backups-%d</NAME><DS_MAD><![CDATA[%s]]></DS_MAD>"+
		"<TM_MAD><![CDATA[-]]></TM_MAD><BASE_PATH><![CDATA[/var/lib/one//datastores/%d]]></BASE_PATH><TYPE>3</TYPE><TEMPLATE>", id, id, mad, id)
	for k, v := range attrs {
		fmt.Fprintf(&b, "<%s><![CDATA[%s]]></%s>", k, v, k)
	}
	b.WriteString("</TEMPLATE></DATASTORE>")
	return b.String()
}

// vmXML is a VM element as the backup action receives it.
func vmXML(vmID int, lastBridge string) string {
	return vmXMLOn(vmID, lastBridge, "qcow2")
}

// vmXMLOn is vmXML for a VM whose system datastore uses TM driver tm (backup bridges apply to
// Ceph only).
func vmXMLOn(vmID int, lastBridge, tm string) string {
	bridge := ""
	if lastBridge != "" {
		bridge = "<LAST_BRIDGE><![CDATA[" + lastBridge + "]]></LAST_BRIDGE>"
	}
	return fmt.Sprintf("<VM><ID>%d</ID><UID>0</UID><NAME>vm-%d</NAME><DEPLOY_ID>one-%d</DEPLOY_ID>"+
		"<BACKUPS><BACKUP_CONFIG><MODE><![CDATA[FULL]]></MODE>%s</BACKUP_CONFIG><BACKUP_IDS/></BACKUPS>"+
		"<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>hv1</HOSTNAME><TM_MAD><![CDATA[%s]]></TM_MAD></HISTORY></HISTORY_RECORDS></VM>",
		vmID, vmID, vmID, bridge, tm)
}

// backupStdin is backup's raw-XML stdin: DS_DRIVER_ACTION_DATA{DATASTORE, VM}.
func backupStdin(ds, vm string) []byte {
	return []byte("<DS_DRIVER_ACTION_DATA>" + ds + vm + "</DS_DRIVER_ACTION_DATA>")
}

// inc is one increment of a backup image.
type inc struct {
	id   int
	snap string
}

// imageXML is a backup IMAGE element; one increment renders as SOURCE only (FULL mode).
func imageXML(id, vmID int, jobID string, incs []inc, path string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "<IMAGE><ID>%d</ID><NAME>%d backup</NAME><TYPE>6</TYPE><FORMAT>raw</FORMAT>", id, vmID)
	if len(incs) == 1 {
		fmt.Fprintf(&b, "<SOURCE><![CDATA[%s]]></SOURCE>", incs[0].snap)
	} else if len(incs) > 1 {
		fmt.Fprintf(&b, "<SOURCE><![CDATA[%s]]></SOURCE><BACKUP_INCREMENTS>", incs[0].snap)
		for i, in := range incs {
			typ, parent := "INCREMENT", i-1
			if i == 0 {
				typ, parent = "FULL", -1
			}
			fmt.Fprintf(&b, "<INCREMENT><DATE>1700000000</DATE><ID>%d</ID><PARENT_ID>%d</PARENT_ID><SIZE>1</SIZE><SOURCE><![CDATA[%s]]></SOURCE><TYPE><![CDATA[%s]]></TYPE></INCREMENT>", in.id, parent, in.snap, typ)
		}
		b.WriteString("</BACKUP_INCREMENTS>")
	}
	if vmID >= 0 {
		fmt.Fprintf(&b, "<VMS><ID>%d</ID></VMS>", vmID)
	}
	if path != "" {
		fmt.Fprintf(&b, "<PATH><![CDATA[%s]]></PATH>", path)
	}
	b.WriteString("<TEMPLATE>")
	if jobID != "" {
		fmt.Fprintf(&b, "<BACKUP_JOB_ID><![CDATA[%s]]></BACKUP_JOB_ID>", jobID)
	}
	b.WriteString("</TEMPLATE></IMAGE>")
	return b.String()
}

// dsMadStdin is the base64 stdin of a DS MAD action (IMAGE first, as ImageManager writes it).
func dsMadStdin(parts ...string) []byte {
	return []byte(base64.StdEncoding.EncodeToString([]byte("<DS_DRIVER_ACTION_DATA>" + strings.Join(parts, "") + "</DS_DRIVER_ACTION_DATA>")))
}

// staged describes a staged backup: what prebackup leaves on the VM host.
type staged struct {
	dir   string            // the staging directory
	files map[string][]byte // file name -> content (disks as written)
}

// stageBackup writes a staging directory for a VM: one qcow2 disk per size (MiB) with dataMiB
// of random data at its start, and vm.xml (base64) recording each disk's SIZE.
func stageBackup(t testing.TB, dir string, vmID, inc int, diskMiB []int, dataMiB int) *staged {
	t.Helper()
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := &staged{dir: dir, files: map[string][]byte{}}
	var disks strings.Builder
	if diskMiB == nil {
		fmt.Fprintf(&disks, "<DISK><DISK_ID>0</DISK_ID><SIZE>64</SIZE></DISK><DISK><DISK_ID>1</DISK_ID><SIZE>64</SIZE></DISK>")
	}
	for id, size := range diskMiB { // no sizes: only vm.xml (the caller writes the disks)
		name := fmt.Sprintf("disk.%d.%d", id, inc)
		p := filepath.Join(dir, name)
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, fmt.Sprintf("%dM", size))
		raw := filepath.Join(dir, "raw.tmp")
		data := make([]byte, dataMiB<<20)
		rand.Read(data)
		os.WriteFile(raw, data, 0o644)
		run(t, "qemu-img", "dd", "-f", "raw", "-O", "qcow2", "if="+raw, "of="+p, "bs=1M", fmt.Sprintf("count=%d", dataMiB))
		os.Remove(raw)
		s.files[name], _ = os.ReadFile(p)
		fmt.Fprintf(&disks, "<DISK><DISK_ID>%d</DISK_ID><SIZE>%d</SIZE><TYPE>FILE</TYPE></DISK>", id, size)
	}
	vm := fmt.Sprintf("<VM><ID>%d</ID><NAME>vm-%d</NAME><TEMPLATE>%s</TEMPLATE><USER_TEMPLATE/></VM>", vmID, vmID, disks.String())
	enc := base64.StdEncoding.EncodeToString([]byte(vm))
	var lines strings.Builder
	for len(enc) > 60 {
		lines.WriteString(enc[:60] + "\n")
		enc = enc[60:]
	}
	lines.WriteString(enc + "\n")
	s.files["vm.xml"] = []byte(lines.String())
	os.WriteFile(filepath.Join(dir, "vm.xml"), s.files["vm.xml"], 0o644)
	chownOneadmin(t, filepath.Dir(dir))
	return s
}

// basePathRemotes lays out a frontend remotes tree whose datastore.conf sets BACKUP_BASE_PATH to
// /var/lib/one/bkstage (the restic binary linked from the installed one), for ONEBACKUP_REMOTES.
func basePathRemotes(t testing.TB) string {
	t.Helper()
	remotes := t.TempDir()
	os.MkdirAll(remotes+"/etc/datastore", 0o755)
	os.MkdirAll(remotes+"/datastore/restic", 0o755)
	os.Symlink("/var/lib/one/remotes/datastore/restic/restic", remotes+"/datastore/restic/restic")
	os.WriteFile(remotes+"/etc/datastore/datastore.conf", []byte("# staging outside the VM dirs\nexport BACKUP_BASE_PATH=\"/var/lib/one/bkstage\"\n"), 0o644)
	chownOneadmin(t, remotes)
	os.Chmod(filepath.Dir(remotes), 0o755)
	return remotes
}

// vmDir is a VM's directory in system datastore 0, as oned passes it (with the '//').
func vmDir(vmID int) string { return fmt.Sprintf("/var/lib/one//datastores/0/%d", vmID) }

// stagingOf is the cleaned staging directory of vmDir.
func stagingOf(vmID int) string { return fmt.Sprintf("/var/lib/one/datastores/0/%d/backup", vmID) }

// backupArgs is backup's argv for a VM on a host.
func backupArgs(host string, vmID int, jobID string) []string {
	if jobID == "" {
		jobID = "-"
	}
	return []string{host + ":" + vmDir(vmID), "0", fmt.Sprintf("one-%d", vmID), jobID, strconv.Itoa(vmID), "0"}
}

// procCmdlines returns pid -> command line of every live process (zombies excluded), except this
// test binary and its ancestors (go test, make, a CI script), whose command lines are not ours.
func procCmdlines() map[int]string {
	out := map[int]string{}
	ancestors := ancestorPids()
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || ancestors[pid] {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cl) == 0 {
			continue
		}
		out[pid] = string(bytes.ReplaceAll(bytes.TrimRight(cl, "\x00"), []byte{0}, []byte{' '}))
	}
	return out
}

// ancestorPids is this process and its parents up to init.
func ancestorPids() map[int]bool {
	out := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !out[pid]; {
		out[pid] = true
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := bytes.LastIndexByte(stat, ')')
		if err != nil || i < 0 {
			break
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 2 {
			break
		}
		pid, _ = strconv.Atoi(f[1])
	}
	return out
}

// processesMatching lists the live processes whose command line contains every substring.
func processesMatching(subs ...string) []string {
	var out []string
	for pid, cl := range procCmdlines() {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(cl, s)
		}
		if ok {
			out = append(out, fmt.Sprintf("%d: %s", pid, cl))
		}
	}
	return out
}

// runErr runs a command as root and returns its combined output and error.
func runErr(argv ...string) (string, error) {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	return string(out), err
}

// watchCmdlines polls every process's command line (but process except's) for secret until the
// returned function is called, which returns the command lines that held it.
func watchCmdlines(secret string, except int) func() []string {
	var seen []string
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for pid, cl := range procCmdlines() {
				if pid != except && strings.Contains(cl, secret) {
					mu.Lock()
					seen = append(seen, fmt.Sprintf("%d: %s", pid, cl))
					mu.Unlock()
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() []string {
		close(stop)
		wg.Wait()
		return seen
	}
}
