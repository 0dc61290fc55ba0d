package tm

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestDriverArgs(t *testing.T) {
	got, ok := DriverArgs([]string{"/var/lib/one/remotes/tm/ssh/prebackup_live", "hv1:/d/0/5", "0"})
	if !ok || strings.Join(got, " ") != "tm ssh prebackup_live hv1:/d/0/5 0" {
		t.Errorf("%v %v", got, ok)
	}
	for _, p := range []string{"/x/datastore/restic/backup", "/x/tm/fs_lvm/prebackup", "/x/tm/qcow2/clone", "/x/other/qcow2/prebackup"} {
		if _, ok := DriverArgs([]string{p}); ok {
			t.Errorf("%s dispatched as a TM backup action", p)
		}
	}
}

// The frontend side must start on a machine without libvirt or librbd: nothing cgo in its imports.
func TestFrontendHasNoLibvirt(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "onebackup/internal/tm", "onebackup/internal/tm/tmmain")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v %s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.Contains(p, "libvirt") || strings.Contains(p, "go-ceph") || strings.HasSuffix(p, "/kvmfile") {
			t.Errorf("the frontend TM code depends on %s", p)
		}
	}
}

func TestRefusals(t *testing.T) {
	var errb strings.Builder
	if code := Main("fs_lvm", "prebackup", []string{"hv1:/d/0/5", "0", "one-5", "-", "5", "0"}, strings.NewReader("<VM/>"), &errb); code == 0 {
		t.Error("fs_lvm accepted")
	}
	errb.Reset()
	if code := Main("qcow2", "prebackup", []string{"hv1:/d/0/5", "", "one-5", "-", "5", "0"}, strings.NewReader("<VM/>"), &errb); code == 0 || !strings.Contains(errb.String(), "no disks") {
		t.Errorf("empty disk list: %s", errb.String())
	}
	errb.Reset()
	// postbackup never fails toward oned.
	if code := Main("qcow2", "postbackup", []string{"bad"}, strings.NewReader(""), &errb); code != 0 || !strings.Contains(errb.String(), "WARNING") {
		t.Errorf("postbackup: %d %s", code, errb.String())
	}
}
