package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The frontend binary is CGO-free and small: it links no libvirt, no Ceph, no host command and
// no hypervisor or storage side (those run on the hosts, in onebackup-host).
func TestFrontendLinksNoHostSide(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{"libvirt.org/", "github.com/ceph/", "onebackup/internal/hostcli", "onebackup/internal/hostjob",
		"onebackup/internal/hypervisor", "onebackup/internal/storage"}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps printed too little to judge: %q", out)
	}
	for _, dep := range deps {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("cmd/onebackup links %s", dep)
			}
		}
	}
}
