package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The KVM tests need libvirtd and QEMU: set up lazily, once, by the first test that asks.
var (
	kvmOnce sync.Once
	kvmEnvV *kvmEnv
	kvmErr  error
)

type kvmEnv struct {
	domType string // kvm, or qemu (TCG) when /dev/kvm is unusable
	tmBin   string // stand-alone frontend TM binary when bin/onebackup has no "tm" command yet
}

const hostBinPath = "/var/tmp/one/tm/onebackup-host"

// testTags builds the binaries under test: with the test hook (hostjob.Hold) and for the Ceph
// release of Debian 12 (go-ceph's pacific tag, as the Makefile builds).
const testTags = "testhooks,pacific"

func needKVM(t *testing.T) *kvmEnv {
	t.Helper()
	kvmOnce.Do(func() { kvmEnvV, kvmErr = setupKVM() })
	if kvmErr != nil {
		t.Fatalf("KVM harness: %v", kvmErr)
	}
	return kvmEnvV
}

func setupKVM() (*kvmEnv, error) {
	env := &kvmEnv{domType: "kvm"}
	steps := [][]string{
		{filepath.Join(h.repo, "test/harness/setup-kvm.sh")},
		{filepath.Join(h.repo, "test/harness/libvirt.sh"), "start"},
		{"go", "build", "-tags", testTags, "-o", filepath.Join(h.repo, "bin/onebackup-host"), "./cmd/onebackup-host"},
		{"install", "-d", "-o", "oneadmin", "-g", "oneadmin", "/var/tmp/one/tm"},
		{"install", "-o", "oneadmin", "-g", "oneadmin", "-m", "0755", filepath.Join(h.repo, "bin/onebackup-host"), hostBinPath},
		{"install", "-d", "-o", "oneadmin", "-g", "oneadmin", "/var/lib/one/datastores", "/var/lib/one/datastores/0", "/var/lib/one/datastores/1"},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = h.repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	// KVM, else TCG: QEMU runs as oneadmin.
	probe := exec.Command("runuser", "-u", "oneadmin", "--", "qemu-system-x86_64", "-accel", "kvm", "-M", "none",
		"-display", "none", "-nodefaults", "-monitor", "stdio")
	probe.Stdin = strings.NewReader("quit\n")
	if err := probe.Run(); err != nil {
		env.domType = "qemu"
	}
	// The frontend's "tm" command lives in bin/onebackup once registered in internal/cli;
	// until then the tests run the same code from a stand-alone build.
	out, _ := exec.Command(filepath.Join(h.repo, "bin/onebackup"), "tm").CombinedOutput()
	if strings.Contains(string(out), "unknown command") {
		env.tmBin = filepath.Join(h.state, "onebackup-tm")
		cmd := exec.Command("go", "build", "-tags", testTags, "-o", env.tmBin, "./internal/tm/tmmain")
		cmd.Dir = h.repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build tm: %v\n%s", err, out)
		}
		os.Chmod(env.tmBin, 0o755)
	}
	return env, nil
}

// tmCmd prepares drivers/tm/<mad>/<action> as oned runs it (oneadmin, argv, VM XML on stdin).
func (e *kvmEnv) tmCmd(t testing.TB, mad, action string, args []string, stdin []byte, extraEnv ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if e.tmBin != "" {
		cmd = exec.Command(e.tmBin, append([]string{"tm", mad, action}, args...)...)
	} else {
		cmd = exec.Command(filepath.Join(h.repo, "drivers/tm", mad, action), args...)
	}
	cmd.Env = h.driverEnv(extraEnv...)
	cmd.Dir = "/var/lib/one"
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(t)}
	return cmd
}

func (e *kvmEnv) tm(t testing.TB, mad, action string, args []string, stdin []byte, extraEnv ...string) result {
	t.Helper()
	cmd := e.tmCmd(t, mad, action, args, stdin, extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	return result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

func virsh(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"virsh", "-q", "-c", "qemu:///system"}, args...)...)
}

// --- test VMs ---------------------------------------------------------------------------

type tdisk struct {
	plain    bool // qcow2 as a plain file (ssh/local system datastores) instead of a link to layers
	volatile bool // a volatile disk (TYPE=fs, no image), backed up under BACKUP_VOLATILE=YES
	id       int
	format   string // qcow2 (an overlay on an image, as OpenNebula's qcow2 driver lays it out) or raw
	sizeMiB  int
	shadow   string // raw file receiving the same writes: the expected content
	rbd      string // an RBD image in pool one (ceph system datastore) instead of a file
}

func (d tdisk) target() string { return "vd" + string(rune('a'+d.id)) }

type testVM struct {
	env     *kvmEnv
	id      int
	dir     string
	name    string
	uuid    string
	disks   []*tdisk
	tmp     string
	running bool
	staging string   // staging dir when BACKUP_BASE_PATH is set ("" = <VM dir>/backup)
	env2    []string // extra driver environment (ONEBACKUP_REMOTES)
	// onStaged runs between prebackup and the upload.
	onStaged func()
	rsync    bool // upload with the rsync datastore instead of restic
}

// upload runs the datastore backup action (restic or rsync) and returns the backup id.
func (vm *testVM) upload(t *testing.T, ds string) string {
	t.Helper()
	// The host side recorded what it staged; the record travels with the backup.
	staging := stagingOf(vm.id)
	if vm.staging != "" {
		staging = vm.staging
	}
	if out, err := runErr("sh", "-c", `cd "$0" && sha256sum --strict --quiet -c sha256sums`, staging); err != nil {
		t.Fatalf("the staged backup in %s does not match its checksum record: %v %s", staging, err, out)
	}
	if vm.rsync {
		id, _ := h.rsyncBackup(t, ds, "hv1", vm.id, "", "", vm.env2...)
		return id
	}
	return h.resticBackup(t, ds, "hv1", vm.id, "", "", vm.env2...)
}

// fetch copies a backed-up file out of the datastore (repo: the restic repository or the
// rsync datastore directory).
func (vm *testVM) fetch(t *testing.T, repo, id, name, dst string) int64 {
	t.Helper()
	if vm.rsync {
		run(t, "cp", "--sparse=always", filepath.Join(repo, strconv.Itoa(vm.id), id, name), dst)
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	staging := stagingOf(vm.id)
	if vm.staging != "" {
		staging = vm.staging
	}
	data := h.restic(t, repo, "dump", "--quiet", id, staging+"/"+name)
	os.WriteFile(dst, []byte(data), 0o644)
	return int64(len(data))
}

// newVM lays out a VM directory in system datastore 0 (disk 0 qcow2 over an image in DS 1,
// with OpenNebula's disk.N -> disk.N.snap/0 link; raw disks as plain files) with a pattern
// already in each disk, and a shadow raw copy per disk.
func newVM(t *testing.T, env *kvmEnv, id int, disks ...*tdisk) *testVM {
	t.Helper()
	vm := &testVM{env: env, id: id, dir: fmt.Sprintf("/var/lib/one/datastores/0/%d", id), name: fmt.Sprintf("onebackup-test-%d", id), disks: disks, tmp: t.TempDir()}
	vm.uuid = fmt.Sprintf("0b5e0000-0000-4000-8000-%012d", id)
	exec.Command("virsh", "-c", "qemu:///system", "destroy", vm.name).Run()
	os.RemoveAll(vm.dir)
	os.MkdirAll(vm.dir, 0o755)
	for _, d := range disks {
		p := filepath.Join(vm.dir, fmt.Sprintf("disk.%d", d.id))
		size := fmt.Sprintf("%dM", d.sizeMiB)
		d.shadow = filepath.Join(vm.tmp, fmt.Sprintf("shadow.%d", d.id))
		run(t, "qemu-img", "create", "-q", "-f", "raw", d.shadow, size)
		if d.rbd != "" {
			ceph.newImage(t, d.rbd, d.sizeMiB)
			run(t, "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 2M", ceph.qemu(d.rbd))
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 2M", d.shadow)
		} else if d.format == "raw" {
			run(t, "qemu-img", "create", "-q", "-f", "raw", p, size)
		} else if d.plain {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, size)
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5b 1M 2M", p)
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5b 1M 2M", d.shadow)
		} else {
			img := fmt.Sprintf("/var/lib/one/datastores/1/img-%d-%d", id, d.id)
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, size)
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", img)
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", d.shadow)
			snap := p + ".snap"
			os.MkdirAll(snap, 0o755)
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", img, snap+"/0")
			os.Symlink(".", snap+"/"+filepath.Base(snap))
			os.Symlink(filepath.Base(snap)+"/0", p)
			run(t, "chown", "oneadmin:oneadmin", img)
		}
	}
	chownOneadmin(t, vm.dir)
	t.Cleanup(func() {
		exec.Command("virsh", "-c", "qemu:///system", "destroy", vm.name).Run()
		if !t.Failed() {
			os.RemoveAll(vm.dir)
			imgs, _ := filepath.Glob(fmt.Sprintf("/var/lib/one/datastores/1/img-%d-*", id))
			for _, img := range imgs {
				os.Remove(img)
			}
		}
	})
	return vm
}

// start boots the VM (no OS: the disks are only written through QEMU) as a transient domain,
// as OpenNebula's KVM driver does.
func (vm *testVM) start(t testing.TB) {
	t.Helper()
	var disks strings.Builder
	for _, d := range vm.disks {
		if d.rbd != "" { // as OpenNebula's KVM driver writes a Ceph disk
			fmt.Fprintf(&disks, "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/><source protocol='rbd' name='%s/%s'><config file='%s'/></source><auth username='%s'><secret type='ceph' uuid='%s'/></auth><target dev='%s' bus='virtio'/></disk>",
				ceph.pool, d.rbd, ceph.conf, ceph.user, cephSecretUUID, d.target())
			continue
		}
		fmt.Fprintf(&disks, "<disk type='file' device='disk'><driver name='qemu' type='%s'/><source file='%s/disk.%d'/><target dev='%s' bus='virtio'/></disk>",
			d.format, vm.dir, d.id, d.target())
	}
	xml := fmt.Sprintf(`<domain type='%s'><name>%s</name><uuid>%s</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>%s<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>`,
		vm.env.domType, vm.name, vm.uuid, disks.String())
	f := filepath.Join(vm.tmp, "domain.xml")
	os.WriteFile(f, []byte(xml), 0o644)
	virsh(t, "create", f)
	vm.running = true
}

// stop powers the VM off cleanly (QEMU quits and flushes its persistent bitmaps).
func (vm *testVM) stop(t testing.TB) {
	t.Helper()
	exec.Command("virsh", "-c", "qemu:///system", "qemu-monitor-command", vm.name, `{"execute":"quit"}`).Run()
	for i := 0; i < 100; i++ {
		if err := exec.Command("virsh", "-c", "qemu:///system", "domid", vm.name).Run(); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm.running = false
}

// kill kills QEMU hard (host crash, OOM killer): persistent bitmaps stay marked in-use.
func (vm *testVM) kill(t testing.TB) {
	t.Helper()
	pid := strings.TrimSpace(run(t, "cat", "/run/libvirt/qemu/"+vm.name+".pid"))
	run(t, "kill", "-9", pid)
	for i := 0; i < 100; i++ {
		if err := exec.Command("virsh", "-c", "qemu:///system", "domid", vm.name).Run(); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm.running = false
}

// write writes a pattern (or zeros with pattern < 0) into a disk, through the running QEMU or
// into the stopped image, and into the shadow.
func (vm *testVM) write(t testing.TB, diskID, pattern int, off, length int64) {
	t.Helper()
	op := fmt.Sprintf("write -P 0x%02x %d %d", pattern, off, length)
	if pattern < 0 {
		op = fmt.Sprintf("write -z %d %d", off, length)
	}
	d := vm.disk(diskID)
	if vm.running {
		out := virsh(t, "qemu-monitor-command", vm.name, "--hmp",
			fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk%d/virtio-backend "%s"`, vm.index(diskID), op))
		if strings.Contains(out, "rror") {
			t.Fatalf("qemu-io in the VM: %s", out)
		}
	} else if d.rbd != "" {
		run(t, "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", "raw", "-c", op, ceph.qemu(d.rbd))
	} else {
		run(t, "runuser", "-u", "oneadmin", "--", "qemu-io", "-f", d.format, "-c", op, filepath.Join(vm.dir, fmt.Sprintf("disk.%d", diskID)))
	}
	run(t, "qemu-io", "-f", "raw", "-c", op, d.shadow)
}

func (vm *testVM) disk(id int) *tdisk {
	for _, d := range vm.disks {
		if d.id == id {
			return d
		}
	}
	panic("no disk")
}

func (vm *testVM) index(id int) int {
	for i, d := range vm.disks {
		if d.id == id {
			return i
		}
	}
	panic("no disk")
}

// expect saves the shadows: what a backup taken now must restore to.
func (vm *testVM) expect(t testing.TB, tag string) map[int]string {
	t.Helper()
	out := map[int]string{}
	for _, d := range vm.disks {
		p := fmt.Sprintf("%s.%s", d.shadow, tag)
		run(t, "cp", "--sparse=always", d.shadow, p)
		out[d.id] = p
	}
	return out
}

type bcfg struct {
	mode     string // FULL | INCREMENT
	li       int    // LAST_INCREMENT_ID
	incMode  string // CBT | SNAPSHOT
	freeze   string
	live     bool
	tpm      bool
	tmMad    string
	disks    string
	vmMad    string
	extraXML string
	lastDS   int // BACKUP_CONFIG/LAST_DATASTORE_ID (0: absent)

	extraConfig string // more BACKUP_CONFIG elements (set by xml for volatile disks)
}

// xml is the <VM> oned sends the TM actions.
func (vm *testVM) xml(c bcfg) []byte {
	lcm := 70
	if c.live {
		lcm = 69
	}
	if c.tmMad == "" {
		c.tmMad = "qcow2"
	}
	if c.vmMad == "" {
		c.vmMad = "kvm"
	}
	var disks strings.Builder
	for _, d := range vm.disks {
		if d.rbd != "" { // a persistent Ceph image: SOURCE is pool/image
			fmt.Fprintf(&disks, "<DISK><DISK_ID>%d</DISK_ID><TARGET>%s</TARGET><FORMAT>raw</FORMAT><SIZE>%d</SIZE><TYPE>RBD</TYPE><DISK_TYPE>RBD</DISK_TYPE><TM_MAD>ceph</TM_MAD><SOURCE>%s/%s</SOURCE><POOL_NAME>%s</POOL_NAME><PERSISTENT>YES</PERSISTENT><CLONE>NO</CLONE><CEPH_USER>%s</CEPH_USER><CEPH_CONF>%s</CEPH_CONF><CEPH_KEY>%s</CEPH_KEY></DISK>",
				d.id, d.target(), d.sizeMiB, ceph.pool, d.rbd, ceph.pool, ceph.user, ceph.conf, ceph.keyfile)
			continue
		}
		if d.volatile { // as oned writes a volatile disk: no image, no TM_MAD of its own
			fmt.Fprintf(&disks, "<DISK><DISK_ID>%d</DISK_ID><TARGET>%s</TARGET><FORMAT>%s</FORMAT><SIZE>%d</SIZE><TYPE>fs</TYPE><DISK_TYPE>FILE</DISK_TYPE></DISK>",
				d.id, d.target(), d.format, d.sizeMiB)
			c.extraConfig = "<BACKUP_VOLATILE>YES</BACKUP_VOLATILE>"
			continue
		}
		fmt.Fprintf(&disks, "<DISK><DISK_ID>%d</DISK_ID><TARGET>%s</TARGET><FORMAT>%s</FORMAT><SIZE>%d</SIZE><TYPE>FILE</TYPE><TM_MAD>%s</TM_MAD></DISK>",
			d.id, d.target(), d.format, d.sizeMiB, c.tmMad)
	}
	tpm := ""
	if c.tpm {
		tpm = "<TPM><MODEL>tpm-crb</MODEL></TPM>"
	}
	inc := ""
	if c.incMode != "" {
		inc = "<INCREMENT_MODE>" + c.incMode + "</INCREMENT_MODE>"
	}
	freeze := ""
	if c.freeze != "" {
		freeze = "<FS_FREEZE>" + c.freeze + "</FS_FREEZE>"
	}
	if c.lastDS > 0 {
		freeze += fmt.Sprintf("<LAST_DATASTORE_ID>%d</LAST_DATASTORE_ID>", c.lastDS)
	}
	return []byte(fmt.Sprintf(`<VM><ID>%d</ID><UID>0</UID><NAME>vm-%d</NAME><DEPLOY_ID>%s</DEPLOY_ID><STATE>3</STATE><LCM_STATE>%d</LCM_STATE>
<TEMPLATE>%s%s<VMID>%d</VMID></TEMPLATE><USER_TEMPLATE/>
<BACKUPS><BACKUP_CONFIG><MODE>%s</MODE><LAST_INCREMENT_ID>%d</LAST_INCREMENT_ID>%s%s%s</BACKUP_CONFIG><BACKUP_IDS/></BACKUPS>
<HISTORY_RECORDS><HISTORY><SEQ>0</SEQ><HOSTNAME>hv1</HOSTNAME><DS_ID>0</DS_ID><TM_MAD>%s</TM_MAD><VM_MAD>%s</VM_MAD></HISTORY></HISTORY_RECORDS>%s</VM>`,
		vm.id, vm.id, vm.uuid, lcm, disks.String(), tpm, vm.id, c.mode, c.li, inc, freeze, c.extraConfig, c.tmMad, c.vmMad, c.extraXML))
}

func (vm *testVM) tmArgs(disks string) []string {
	return []string{"hv1:" + vmDir(vm.id), disks, vm.uuid, "-", strconv.Itoa(vm.id), "0"}
}

func actionName(base string, live bool) string {
	if live {
		return base + "_live"
	}
	return base
}

// backupRound runs TM prebackup → restic backup → TM postbackup and returns the snapshot id.
func (vm *testVM) backupRound(t *testing.T, ds string, c bcfg) string {
	t.Helper()
	if c.disks == "" {
		c.disks = "0"
	}
	mad := c.tmMad
	if mad == "" {
		mad = "qcow2"
	}
	r := vm.env.tm(t, mad, actionName("prebackup", c.live), vm.tmArgs(c.disks), vm.xml(c), vm.env2...)
	if r.code != 0 {
		t.Fatalf("prebackup (%+v) failed: exit %d: %s", c, r.code, r.stderr)
	}
	if vm.onStaged != nil {
		vm.onStaged()
	}
	id := vm.upload(t, ds)
	r = vm.env.tm(t, mad, actionName("postbackup", c.live), vm.tmArgs(c.disks), vm.xml(c), vm.env2...)
	if r.code != 0 || strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("postbackup failed: exit %d: %s", r.code, r.stderr)
	}
	vm.checkClean(t)
	return id
}

// waitUnlocked waits until no host-side run holds the VM's lock (its file exists only while held).
func (vm *testVM) waitUnlocked(t *testing.T) {
	t.Helper()
	waitFor(t, "the host side to release the lock of VM "+strconv.Itoa(vm.id), 30*time.Second, func() bool {
		_, err := os.Lstat(filepath.Join(vm.dir, ".backup.lock"))
		return os.IsNotExist(err)
	})
}

// checkClean: no staging, tmp, socket, lock file or libvirt job left, and the VM runs on its
// original chain.
func (vm *testVM) checkClean(t testing.TB) {
	t.Helper()
	for _, p := range []string{"backup", "tmp", "backup.socket", ".backup.lock"} {
		if _, err := os.Lstat(filepath.Join(vm.dir, p)); err == nil {
			t.Errorf("leftover %s/%s", vm.dir, p)
		}
	}
	if socks, _ := filepath.Glob(filepath.Join(vm.dir, "*.sock*")); len(socks) > 0 {
		t.Errorf("leftover sockets %v", socks)
	}
	if procs := processesMatching("qemu-nbd", vm.dir+"/"); len(procs) > 0 {
		t.Errorf("leftover qemu-nbd: %v", procs)
	}
	if !vm.running {
		return
	}
	out, _ := exec.Command("virsh", "-c", "qemu:///system", "domjobinfo", vm.name).CombinedOutput()
	if !strings.Contains(string(out), "None") {
		t.Errorf("a job still runs on %s: %s", vm.name, out)
	}
	st := strings.TrimSpace(virsh(t, "domstate", vm.name))
	if st != "running" {
		t.Errorf("domain %s is %s after the backup", vm.name, st)
	}
	// The domain's active layer of each disk is what disk.<id> designates (SNAPSHOT mode moves
	// disk.<id> along its own layers; the other modes never change it).
	blk := virsh(t, "domblklist", vm.name)
	srcs := map[string]string{}
	for _, line := range strings.Split(blk, "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			srcs[f[0]] = f[1]
		}
	}
	for _, d := range vm.disks {
		if d.rbd != "" {
			if want := ceph.pool + "/" + d.rbd; srcs[d.target()] != want {
				t.Errorf("domain %s runs %s on %s, not on %s", vm.name, d.target(), srcs[d.target()], want)
			}
			continue
		}
		want, _ := filepath.EvalSymlinks(fmt.Sprintf("%s/disk.%d", vm.dir, d.id))
		got, _ := filepath.EvalSymlinks(srcs[d.target()])
		if want == "" || got != want {
			t.Errorf("domain %s runs %s on %s, not on disk.%d (%s)", vm.name, d.target(), srcs[d.target()], d.id, want)
		}
	}
}

// checkpoints lists this VM's libvirt checkpoints.
func (vm *testVM) checkpoints(t testing.TB) []string {
	out := strings.Fields(virsh(t, "checkpoint-list", vm.name, "--name"))
	sort.Strings(out)
	return out
}

// bitmaps lists the persistent bitmaps of a disk image.
func (vm *testVM) bitmaps(t testing.TB, diskID int) []string {
	out := run(t, "qemu-img", "info", "-U", "--output=json", fmt.Sprintf("%s/disk.%d", vm.dir, diskID))
	var info struct {
		Specific struct {
			Data struct {
				Bitmaps []struct{ Name string } `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	json.Unmarshal([]byte(out), &info)
	var names []string
	for _, b := range info.Specific.Data.Bitmaps {
		names = append(names, b.Name)
	}
	sort.Strings(names)
	return names
}

// restoreCompare rebuilds disk diskID from the chain of snapshots (full first) and compares it
// with the expected content; it returns the sizes of the restored files.
func (vm *testVM) restoreCompare(t *testing.T, repo string, chain []string, diskID int, expected string) []int64 {
	t.Helper()
	dir := t.TempDir()
	var prev string
	var sizes []int64
	for k, id := range chain {
		name := fmt.Sprintf("disk.%d.%d", diskID, k)
		p := filepath.Join(dir, name)
		sizes = append(sizes, vm.fetch(t, repo, id, name, p))
		if prev != "" {
			run(t, "qemu-img", "rebase", "-q", "-u", "-F", "qcow2", "-b", prev, p)
		} else {
			info := run(t, "qemu-img", "info", p)
			if strings.Contains(info, "backing file:") {
				t.Errorf("full backup %s has a backing file:\n%s", name, info)
			}
		}
		prev = p
	}
	out, err := exec.Command("qemu-img", "compare", "-F", "raw", prev, expected).CombinedOutput()
	if err != nil {
		t.Fatalf("restore of disk %d from %v differs from the disk at backup time: %s", diskID, chain, out)
	}
	return sizes
}
