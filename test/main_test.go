// Package test holds the end-to-end tests: the real driver executables of drivers/<backend>/ run
// as oneadmin against simulated hosts (one sshd each on loopback, started here), real restic,
// rsync and qemu-img. They need root (to start sshd and switch to oneadmin).
package test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
		// Never a silent "ok": every test is filtered out, so go test reports the package
		// as "[no tests to run]", and -v shows why.
		fmt.Println("SKIP: end-to-end tests need root (they start sshd hosts and run drivers as oneadmin); run make test as root")
		flag.Parse()
		flag.Set("test.skip", ".")
		os.Exit(m.Run())
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
	for _, f := range afterTests {
		f()
	}
	h.stop()
	os.Exit(code)
}

// afterTests stop what tests started lazily and share (the S3 servers).
var afterTests []func()

// harness is the set of simulated hosts and installed programs.
type harness struct {
	repo     string // checkout root
	state    string // hosts.sh state directory
	authSock string
	runDir   string
	users    *os.File // shared lock held while this process uses the hosts
}

// Several test processes may share the hosts (go test runs packages in parallel; developers run
// subsets side by side): each holds a shared lock on usersLock while it runs, setup happens under
// setupLock, and the last one out stops the hosts.
const (
	usersLock = "/tmp/onebackup-e2e.users.lock"
	setupLock = "/tmp/onebackup-e2e.setup.lock"
)

func startHarness() (*harness, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	h := &harness{repo: filepath.Dir(wd), state: "/tmp/onebackup-e2e"}
	h.authSock = filepath.Join(h.state, "agent.sock")
	h.runDir = filepath.Join(h.state, "run")
	if h.users, err = flock(usersLock, syscall.LOCK_SH); err != nil {
		return nil, err
	}
	setup, err := flock(setupLock, syscall.LOCK_EX)
	if err != nil {
		return h, err
	}
	defer setup.Close()
	steps := [][]string{
		{filepath.Join(h.repo, "test/harness/setup-deps.sh")},
		// -tags testhooks: the binaries honour ONEBACKUP_TEST_HOLD (see hostjob.Hold).
		{"go", "build", "-tags", testTags, "-o", filepath.Join(h.repo, "bin/onebackup"), "./cmd/onebackup"},
		// The remotes are synced to hosts by `onehost sync`; here all hosts share one filesystem.
		{"install", "-o", "oneadmin", "-g", "oneadmin", "-m", "0755", filepath.Join(h.repo, "bin/onebackup"), "/var/tmp/one/datastore/onebackup"},
	}
	if !h.hostsUp() {
		steps = append(steps, []string{filepath.Join(h.repo, "test/harness/hosts.sh"), "up", h.state})
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = h.repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return h, fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return h, nil
}

// hostsUp tells whether a running harness answers (every host, through the agent).
func (h *harness) hostsUp() bool {
	for _, host := range []string{"fe", "hv1", "hv2", "bk1"} {
		cmd := exec.Command("ssh", host, "true")
		cmd.Env = h.driverEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: oneadmin(nopTB{})}
		if cmd.Run() != nil {
			return false
		}
	}
	return true
}

func (h *harness) stop() {
	if h.users != nil {
		h.users.Close()
	}
	last, err := os.OpenFile(usersLock, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer last.Close()
	if syscall.Flock(int(last.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
		exec.Command(filepath.Join(h.repo, "test/harness/hosts.sh"), "down", h.state).Run()
	}
}

func flock(path string, how int) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// nopTB lets harness code outside a test use helpers that take a testing.TB.
type nopTB struct{ testing.TB }

func (nopTB) Helper()                   {}
func (nopTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (nopTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
