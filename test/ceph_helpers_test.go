package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"onebackup/internal/one"
)

// The Ceph tests run against a real single-node cluster (test/harness/ceph.sh: mon, mgr, one
// bluestore OSD on a sparse file, cephx, pool one), started once per test process and stopped
// after the tests; the S3 tests use its radosgw.

type cephEnv struct {
	conf, user, pool string
	keyfile          string // CEPH_KEY: a file holding client.oneadmin's key, readable by oneadmin
}

var (
	cephOnce sync.Once
	ceph     *cephEnv
	cephErr  error
)

// cephSecretUUID is the libvirt secret holding client.oneadmin's key (OpenNebula's CEPH_SECRET).
const cephSecretUUID = "0b5ec0de-0000-4000-8000-000000000001"

func startCeph() (*cephEnv, error) {
	for _, s := range [][]string{
		{"test/harness/setup-ceph.sh"},
		{"test/harness/ceph.sh", "start", cephState},
	} {
		cmd := exec.Command(filepath.Join(h.repo, s[0]), s[1:]...)
		cmd.Dir = h.repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	afterTests = append(afterTests, func() {
		exec.Command(filepath.Join(h.repo, "test/harness/ceph.sh"), "stop", cephState).Run()
	})
	env, err := one.LoadConf(filepath.Join(cephState, "env"))
	if err != nil {
		return nil, err
	}
	c := &cephEnv{conf: env["CEPH_CONF"], user: env["CEPH_USER"], pool: env["CEPH_POOL"], keyfile: filepath.Join(cephState, "oneadmin.key")}
	key, err := exec.Command("ceph", "-c", c.conf, "auth", "get-key", "client."+c.user).Output()
	if err != nil {
		return nil, fmt.Errorf("ceph auth get-key: %v", err)
	}
	if err := os.WriteFile(c.keyfile, key, 0o600); err != nil {
		return nil, err
	}
	if out, err := exec.Command("chown", "oneadmin:oneadmin", c.keyfile).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("chown %s: %v: %s", c.keyfile, err, out)
	}
	return c, nil
}

// needCeph starts the cluster (once) and, for KVM tests, the libvirt secret of its key.
func needCeph(t *testing.T) *cephEnv {
	t.Helper()
	cephOnce.Do(func() { ceph, cephErr = startCeph() })
	if cephErr != nil {
		t.Fatalf("Ceph harness: %v", cephErr)
	}
	return ceph
}

// defineSecret gives libvirt the key QEMU uses for RBD disks, as OpenNebula's hosts have it.
func (c *cephEnv) defineSecret(t *testing.T) {
	t.Helper()
	xml := filepath.Join(t.TempDir(), "secret.xml")
	os.WriteFile(xml, []byte(fmt.Sprintf(`<secret ephemeral='no' private='no'><uuid>%s</uuid><usage type='ceph'><name>client.%s secret</name></usage></secret>`, cephSecretUUID, c.user)), 0o644)
	virsh(t, "secret-define", xml)
	virsh(t, "secret-set-value", cephSecretUUID, "--file", c.keyfile)
}

// rbdCmd runs the rbd CLI with the disks' credentials (as root, so that it reads and writes
// the tests' private directories) and returns its standard output.
func (c *cephEnv) rbdCmd(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.rbdErr(args...)
	if err != nil {
		t.Fatalf("rbd %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func (c *cephEnv) rbdErr(args ...string) (string, error) {
	cmd := exec.Command("rbd", append([]string{"--id", c.user, "--conf", c.conf, "--keyfile", c.keyfile}, args...)...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, errb.String())
	}
	return string(out), nil
}

// runStdin runs argv with input on its standard input.
func runStdin(input string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// qemu is an image (at a snapshot) for qemu-img and qemu-io.
func (c *cephEnv) qemu(image string) string {
	return fmt.Sprintf("rbd:%s/%s:id=%s:conf=%s:keyfile=%s", c.pool, image, c.user, c.conf, c.keyfile)
}

// newImage creates an empty image, removed (with its snapshots) after the test unless it failed.
func (c *cephEnv) newImage(t testing.TB, name string, sizeMiB int) {
	t.Helper()
	c.removeImage(t, name)
	c.rbdCmd(t, "create", c.pool+"/"+name, "--size", fmt.Sprintf("%dM", sizeMiB))
	t.Cleanup(func() {
		if !t.Failed() {
			c.removeImage(t, name)
		}
	})
}

func (c *cephEnv) removeImage(t testing.TB, name string) {
	img := c.pool + "/" + name
	if _, err := c.rbdErr("info", img); err != nil {
		return
	}
	for _, s := range c.snaps(t, name) {
		c.rbdErr("snap", "unprotect", img+"@"+s)
	}
	c.rbdCmd(t, "snap", "purge", img)
	c.rbdCmd(t, "rm", img)
}

// snaps lists an image's snapshot names, sorted.
func (c *cephEnv) snaps(t testing.TB, name string) []string {
	t.Helper()
	var list []struct {
		Name string `json:"name"`
	}
	out := c.rbdCmd(t, "snap", "ls", "--format", "json", c.pool+"/"+name)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("rbd snap ls: %v: %s", err, out)
	}
	var names []string
	for _, s := range list {
		names = append(names, s.Name)
	}
	sort.Strings(names)
	return names
}

// export writes an image (at a snapshot) to a raw file: what a restore of that point must be.
func (c *cephEnv) export(t testing.TB, spec, dst string) string {
	t.Helper()
	c.rbdCmd(t, "export", "--no-progress", c.pool+"/"+spec, dst)
	return dst
}

// cephVM is a KVM test VM whose disks are RBD images (ceph system datastore).
func cephVM(t *testing.T, env *kvmEnv, vid int, sizesMiB ...int) *testVM {
	t.Helper()
	var disks []*tdisk
	for i, s := range sizesMiB {
		disks = append(disks, &tdisk{id: i, format: "raw", sizeMiB: s, rbd: fmt.Sprintf("vm-%d-disk-%d", vid, i)})
	}
	return newVM(t, env, vid, disks...)
}

// checkAnchors: the image's snapshots are exactly want (plus the test's own, which must stay).
func (vm *testVM) checkAnchors(t testing.TB, diskID int, want ...string) {
	t.Helper()
	got := ceph.snaps(t, vm.disk(diskID).rbd)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("disk %d snapshots %v, want %v", diskID, got, want)
	}
}
