// Package test holds the end-to-end tests: the real driver executables of drivers/<backend>/ run
// as oneadmin against simulated hosts (one sshd each on loopback, started here), real restic,
// rsync and qemu-img. They need root (to start sshd and switch to oneadmin).
package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// h is the harness shared by every test of the package.
var h *harness

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "end-to-end tests need root")
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping end-to-end tests: they need root (sshd, oneadmin)")
		os.Exit(0)
	}
	var err error
	h, err = startHarness()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		if h != nil {
			h.stop()
		}
		os.Exit(1)
	}
	code := m.Run()
	h.stop()
	os.Exit(code)
}

// harness is the set of simulated hosts and installed programs.
type harness struct {
	repo     string // checkout root
	state    string // hosts.sh state directory
	authSock string
	runDir   string
}

func startHarness() (*harness, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	h := &harness{repo: filepath.Dir(wd), state: "/tmp/onebackup-e2e"}
	steps := [][]string{
		{filepath.Join(h.repo, "test/harness/setup-deps.sh")},
		{"go", "build", "-o", filepath.Join(h.repo, "bin/onebackup"), "./cmd/onebackup"},
		{filepath.Join(h.repo, "test/harness/hosts.sh"), "up", h.state},
		// The remotes are synced to hosts by `onehost sync`; here all hosts share one filesystem.
		{"install", "-o", "oneadmin", "-g", "oneadmin", "-m", "0755", filepath.Join(h.repo, "bin/onebackup"), "/var/tmp/one/datastore/onebackup"},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = h.repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return h, fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	h.authSock = filepath.Join(h.state, "agent.sock")
	h.runDir = filepath.Join(h.state, "run")
	return h, nil
}

func (h *harness) stop() {
	exec.Command(filepath.Join(h.repo, "test/harness/hosts.sh"), "down", h.state).Run()
}
