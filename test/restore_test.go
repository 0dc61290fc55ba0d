package test

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"onebackup/internal/oned"
	"onebackup/internal/oned/onedtest"
)

// Datastore ids 300-320 and VM ids 300-320 belong to the restore tests.

const restoreServerPassword = `srv:pa"ss w0rd`

// restoreVMXML is a backed-up VM with two image disks, a volatile swap disk, NICs and context.
const restoreVMXML = `<VM><ID>%d</ID><NAME>web</NAME><TEMPLATE>` +
	`<AUTOMATIC_REQUIREMENTS><![CDATA[!(PUBLIC_CLOUD = YES)]]></AUTOMATIC_REQUIREMENTS>` +
	`<CONTEXT><DISK_ID>2</DISK_ID><ETH0_IP>10.0.0.5</ETH0_IP><ETH1_IP6>2001:db8::6</ETH1_IP6><NETWORK>YES</NETWORK><METHOD>m</METHOD></CONTEXT>` +
	`<CPU>1</CPU>` +
	`<DISK><DATASTORE_ID>1</DATASTORE_ID><DISK_ID>0</DISK_ID><IMAGE_ID>5</IMAGE_ID><SIZE>8</SIZE><SOURCE>/var/lib/one/datastores/1/abc</SOURCE><TARGET>vda</TARGET><TYPE>FILE</TYPE></DISK>` +
	`<DISK><DISK_ID>1</DISK_ID><IMAGE_ID>6</IMAGE_ID><SIZE>8</SIZE><TYPE>FILE</TYPE><DEV_PREFIX>sd</DEV_PREFIX></DISK>` +
	`<DISK><DISK_ID>3</DISK_ID><SIZE>256</SIZE><TYPE>swap</TYPE></DISK>` +
	`<GRAPHICS><PORT>5900</PORT><TYPE>VNC</TYPE></GRAPHICS>` +
	`<MEMORY>512</MEMORY>` +
	`<NIC><BRIDGE>br0</BRIDGE><IP>10.0.0.5</IP><MAC>02:00:0a:00:00:05</MAC><NETWORK>pub</NETWORK><NIC_ID>0</NIC_ID></NIC>` +
	`<NIC><IP6>2001:db8::6</IP6><MAC>02:00:0a:00:00:06</MAC><NETWORK>v6</NETWORK><NIC_ID>1</NIC_ID></NIC>` +
	`<TEMPLATE_ID>3</TEMPLATE_ID><TM_MAD_SYSTEM>ssh</TM_MAD_SYSTEM><VMID>%d</VMID>` +
	`</TEMPLATE><USER_TEMPLATE><DESCRIPTION><![CDATA[say "hi" C:\x]]></DESCRIPTION></USER_TEMPLATE></VM>`

// stageRestorable stages a backup of vmID (two 8 MiB disks) with the VM XML above and, when
// tpm is not empty, a vTPM state file.
func stageRestorable(t *testing.T, dir string, vmID, inc int, tpm string) {
	t.Helper()
	st := stageBackup(t, dir, vmID, inc, []int{8, 8}, 1)
	enc := base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf(restoreVMXML, vmID, vmID)))
	os.WriteFile(filepath.Join(st.dir, "vm.xml"), []byte(enc+"\n"), 0o644)
	if tpm != "" {
		os.WriteFile(filepath.Join(st.dir, "disk.tpm.0"), []byte(tpm), 0o644)
	}
	chownOneadmin(t, st.dir)
}

// fakeOned is oned's XML-RPC API for restore: it checks every session is a valid login token
// of the server user for the expected user, and records the templates it receives.
type fakeOned struct {
	*onedtest.Server
	env []string // the driver's environment to reach it

	mu        sync.Mutex
	user      string
	failImage int // fail the n-th one.image.allocate (0: never)
	images    int
	badAuth   []string
}

func newFakeOned(t *testing.T, user string) *fakeOned {
	t.Helper()
	dir := t.TempDir()
	auth := filepath.Join(dir, "onegate_auth")
	if err := os.WriteFile(auth, []byte("serveradmin:"+restoreServerPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	chownOneadmin(t, dir)
	os.Chmod(filepath.Dir(dir), 0o755)
	f := &fakeOned{user: user}
	f.Server = onedtest.New(f.handle)
	t.Cleanup(f.Close)
	f.env = []string{"ONE_XMLRPC=" + f.URL + "/RPC2", "ONE_CIPHER_AUTH=" + auth}
	return f
}

func (f *fakeOned) handle(c onedtest.Call) onedtest.Reply {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok, err := oned.ParseLoginToken(c.String(0), restoreServerPassword)
	switch {
	case err != nil:
		f.badAuth = append(f.badAuth, err.Error())
		return onedtest.Fail("[" + c.Method + "] User couldn't be authenticated, aborting call.")
	case tok.ServerUser != "serveradmin" || tok.Target != f.user:
		f.badAuth = append(f.badAuth, fmt.Sprintf("token for %s as %s", tok.ServerUser, tok.Target))
		return onedtest.Fail("[" + c.Method + "] wrong user")
	case time.Until(tok.Expire) < 60*time.Second || time.Until(tok.Expire) > 130*time.Second:
		f.badAuth = append(f.badAuth, fmt.Sprintf("token expires at %v", tok.Expire))
		return onedtest.Fail("[" + c.Method + "] expired token")
	}
	switch c.Method {
	case "one.image.allocate":
		f.images++
		if f.images == f.failImage {
			return onedtest.Fail("[one.image.allocate] Not enough capacity in datastore 1")
		}
		return onedtest.OK(400 + f.images)
	case "one.template.allocate":
		return onedtest.OK(90)
	case "one.image.delete":
		return onedtest.OK(c.Int(1))
	}
	return onedtest.Fail("unexpected method " + c.Method)
}

func (f *fakeOned) check(t *testing.T) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.badAuth) > 0 {
		t.Errorf("oned refused sessions: %v", f.badAuth)
	}
}

// restoreStdin is restore's base64 stdin.
func restoreStdin(img, ds string, dst int, opts map[string]string) []byte {
	var b strings.Builder
	for _, k := range []string{"NAME", "NO_IP", "NO_NIC", "INCREMENT_ID", "DISK_ID", "USERNAME"} {
		if v, ok := opts[k]; ok {
			fmt.Fprintf(&b, "<%s><![CDATA[%s]]></%s>", k, v, k)
		}
	}
	return dsMadStdin(img, ds, fmt.Sprintf("<DESTINATION_DS_ID>%d</DESTINATION_DS_ID>", dst), "<TEMPLATE>"+b.String()+"</TEMPLATE>")
}

// restoreFailure is the part of stderr oned turns into the failure message.
func restoreFailure(stderr string) []string {
	var out []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "INFO:") || strings.HasPrefix(l, "WARN:") || strings.HasPrefix(l, "DEBUG:") || strings.HasPrefix(l, "ERROR:") {
			continue
		}
		out = append(out, l)
	}
	return out
}

func restoreImageTemplate(name, typ, path string, ds int, job string) string {
	s := fmt.Sprintf("NAME = %q\nTYPE = %q\nPATH = %q\nFROM_BACKUP_DS = \"%d\"\n", name, typ, path, ds)
	if job != "" {
		s += fmt.Sprintf("BACKUP_JOB_ID = %q\n", job)
	}
	return s
}

// restoreScenario backs up VM vmID twice (increments 0 and 1, vTPM state in both when tpm) and
// runs the restore checks against backend's driver; layout gives the stored directory of a
// snapshot's files.
func restoreScenario(t *testing.T, backend string, ds string, dsID, vmID int, backup func(jobID string) string, layout func(snap string) string, tpm bool) {
	tpm0, tpm1 := "", ""
	if tpm {
		tpm0, tpm1 = "tpm state 0", "tpm state 1\x00\xff"
	}
	stageRestorable(t, stagingOf(vmID), vmID, 0, tpm0)
	id0 := backup("")
	stageRestorable(t, stagingOf(vmID), vmID, 1, tpm1)
	id1 := backup("")
	img := imageXML(30, vmID, "", []inc{{0, id0}, {1, id1}}, "")
	full := fmt.Sprintf("0:%s,1:%s", id0, id1)

	t.Run("full", func(t *testing.T) {
		f := newFakeOned(t, "alice")
		out := h.mustDriver(t, backend, "restore", []string{"17"}, restoreStdin(img, ds, 1, map[string]string{"NAME": "web", "NO_IP": "yes", "USERNAME": "alice"}), f.env...)
		if out != "90 401 402\n" {
			t.Fatalf("stdout %q, want \"90 401 402\\n\"", out)
		}
		f.check(t)
		allocs := f.CallsTo("one.image.allocate")
		if len(allocs) != 2 {
			t.Fatalf("%d image allocations", len(allocs))
		}
		for i, want := range []string{
			restoreImageTemplate("web-disk-0", "OS", fmt.Sprintf("%s://%d//%s%s/disk.0.1", backend, dsID, full, layout(id1)), dsID, ""),
			restoreImageTemplate("web-disk-1", "DATABLOCK", fmt.Sprintf("%s://%d//%s%s/disk.1.1", backend, dsID, full, layout(id1)), dsID, ""),
		} {
			if got := allocs[i].String(1); got != want {
				t.Errorf("image %d template:\n%s\nwant:\n%s", i, got, want)
			}
			if allocs[i].Int(2) != 1 || allocs[i].Params[3] != false {
				t.Errorf("image %d allocated with %v, want datastore 1 and false", i, allocs[i].Params[2:])
			}
		}
		tmpls := f.CallsTo("one.template.allocate")
		if len(tmpls) != 1 {
			t.Fatalf("%d template allocations", len(tmpls))
		}
		want := "NAME= \"web\"\nCONTEXT=[\n    NETWORK=\"YES\",\n    METHOD=\"m\"\n]\nCPU= \"1\"\n" +
			"DISK=[\n    IMAGE_ID=\"401\"\n]\nDISK=[\n    DEV_PREFIX=\"sd\",\n    IMAGE_ID=\"402\"\n]\nDISK=[\n    SIZE=\"256\",\n    TYPE=\"swap\"\n]\n" +
			"GRAPHICS=[\n    TYPE=\"VNC\"\n]\nMEMORY= \"512\"\nNIC=[\n    NETWORK=\"pub\"\n]\nNIC=[\n    NETWORK=\"v6\"\n]\n" +
			"DESCRIPTION= \"say \\\"hi\\\" C:\\x\"\n"
		if tpm {
			want += "TPM_STATE= \"" + base64.StdEncoding.EncodeToString([]byte(tpm1)) + "\"\n"
		}
		if got := tmpls[0].String(1); got != want {
			t.Errorf("VM template:\n%s\nwant:\n%s", got, want)
		}
		if n := len(f.CallsTo("one.image.delete")); n != 0 {
			t.Errorf("%d images deleted by a successful restore", n)
		}
	})

	t.Run("increment", func(t *testing.T) {
		f := newFakeOned(t, "bob")
		out := h.mustDriver(t, backend, "restore", []string{"18"}, restoreStdin(img, ds, 1, map[string]string{"INCREMENT_ID": "0", "USERNAME": "bob"}), f.env...)
		if out != "90 401 402\n" {
			t.Fatalf("stdout %q", out)
		}
		f.check(t)
		allocs := f.CallsTo("one.image.allocate")
		base := fmt.Sprintf("%d-%s", vmID, id0)
		want := restoreImageTemplate(base+"-disk-1", "DATABLOCK", fmt.Sprintf("%s://%d//0:%s%s/disk.1.0", backend, dsID, id0, layout(id0)), dsID, "")
		if len(allocs) != 2 || allocs[1].String(1) != want {
			t.Fatalf("image templates %+v\nwant second:\n%s", allocs, want)
		}
		tmpl := f.CallsTo("one.template.allocate")[0].String(1)
		for _, s := range []string{"NAME= \"" + base + "\"\n", "NIC=[\n    IP=\"10.0.0.5\",\n    NETWORK=\"pub\"\n]", "NIC=[\n    IP6=\"2001:db8::6\",\n    NETWORK=\"v6\"\n]"} {
			if !strings.Contains(tmpl, s) {
				t.Errorf("VM template lacks %q:\n%s", s, tmpl)
			}
		}
		if tpm && !strings.Contains(tmpl, "TPM_STATE= \""+base64.StdEncoding.EncodeToString([]byte(tpm0))+"\"") {
			t.Errorf("VM template lacks the vTPM state of increment 0:\n%s", tmpl)
		}
		if strings.Contains(tmpl, "MAC=") {
			t.Errorf("VM template keeps MACs:\n%s", tmpl)
		}
	})

	t.Run("disk", func(t *testing.T) {
		f := newFakeOned(t, "carol")
		out := h.mustDriver(t, backend, "restore", []string{"19"}, restoreStdin(img, ds, 1, map[string]string{"DISK_ID": "1", "NO_NIC": "YES", "USERNAME": "carol"}), f.env...)
		if out != "-1 401\n" {
			t.Fatalf("stdout %q, want \"-1 401\\n\"", out)
		}
		f.check(t)
		want := restoreImageTemplate(fmt.Sprintf("%d-%s-disk-1", vmID, id1), "DATABLOCK", fmt.Sprintf("%s://%d//%s%s/disk.1.1", backend, dsID, full, layout(id1)), dsID, "")
		if allocs := f.CallsTo("one.image.allocate"); len(allocs) != 1 || allocs[0].String(1) != want {
			t.Errorf("image templates %+v\nwant:\n%s", allocs, want)
		}
		if n := len(f.CallsTo("one.template.allocate")); n != 0 {
			t.Errorf("a VM template was created for a single-disk restore")
		}
	})

	t.Run("rollback", func(t *testing.T) {
		f := newFakeOned(t, "dave")
		f.failImage = 2
		r := h.driver(t, backend, "restore", []string{"20"}, restoreStdin(img, ds, 1, map[string]string{"USERNAME": "dave"}), f.env...)
		if r.code == 0 || r.stdout != "" {
			t.Fatalf("restore with a failing allocation: exit %d, stdout %q", r.code, r.stdout)
		}
		f.check(t)
		dels := f.CallsTo("one.image.delete")
		if len(dels) != 1 || dels[0].Int(1) != 401 || dels[0].Params[2] != false {
			t.Errorf("deletions %+v, want one.image.delete(401, false)", dels)
		}
		if n := len(f.CallsTo("one.template.allocate")); n != 0 {
			t.Errorf("VM template created after a failed image")
		}
		lines := restoreFailure(r.stderr)
		if len(lines) != 1 || !strings.Contains(lines[0], "Not enough capacity in datastore 1") ||
			!strings.Contains(lines[0], "images created by this restore were deleted: 401") {
			t.Errorf("stderr %q, want one line with the cause and the deleted image", r.stderr)
		}
	})

	t.Run("job", func(t *testing.T) {
		stageRestorable(t, stagingOf(vmID), vmID, 0, "")
		idj := backup("7")
		img := imageXML(31, vmID, "7", []inc{{0, idj}}, "")
		f := newFakeOned(t, "erin")
		out := h.mustDriver(t, backend, "restore", []string{"21"}, restoreStdin(img, ds, 1, map[string]string{"DISK_ID": "0", "USERNAME": "erin"}), f.env...)
		if out != "-1 401\n" {
			t.Fatalf("stdout %q", out)
		}
		want := restoreImageTemplate(fmt.Sprintf("%d-%s-disk-0", vmID, idj), "OS", fmt.Sprintf("%s://%d/7/0:%s%s/disk.0.0", backend, dsID, idj, layout(idj)), dsID, "7")
		if allocs := f.CallsTo("one.image.allocate"); len(allocs) != 1 || allocs[0].String(1) != want {
			t.Errorf("image templates %+v\nwant:\n%s", allocs, want)
		}
	})

	t.Run("errors", func(t *testing.T) {
		f := newFakeOned(t, "frank")
		for _, c := range []struct {
			opts map[string]string
			want string
		}{
			{map[string]string{"NAME": "x"}, "USERNAME or DESTINATION_DS_ID"},
			{map[string]string{"USERNAME": "frank", "INCREMENT_ID": "5"}, "no increment 5"},
			{map[string]string{"USERNAME": "frank", "DISK_ID": "9"}, "has no disk 9"},
		} {
			r := h.driver(t, backend, "restore", []string{"22"}, restoreStdin(img, ds, 1, c.opts), f.env...)
			if lines := restoreFailure(r.stderr); r.code == 0 || len(lines) != 1 || !strings.Contains(lines[0], c.want) {
				t.Errorf("%v: exit %d, stderr %q, want %q", c.opts, r.code, r.stderr, c.want)
			}
		}
		if n := len(f.Calls()); n != 0 {
			t.Errorf("%d calls to oned for invalid requests", n)
		}
	})
}

func TestRestoreRestic(t *testing.T) {
	resetDS(t, 300)
	ds := resticDS(300, nil)
	restoreScenario(t, "restic", ds, 300, 300,
		func(jobID string) string { return h.resticBackup(t, ds, "hv1", 300, jobID, "") },
		func(string) string { return "/var/lib/one/datastores/0/300/backup" }, true)
}

func TestRestoreRsync(t *testing.T) {
	resetDS(t, 301)
	ds := rsyncDS(301, nil)
	restoreScenario(t, "rsync", ds, 301, 301,
		func(jobID string) string { id, _ := h.rsyncBackup(t, ds, "hv1", 301, jobID, ""); return id },
		func(snap string) string { return "/var/lib/one/datastores/301/301/" + snap }, true)
}
