package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// refused runs an action under strace and checks that it failed with one clear line on stderr,
// printed no secret, and started no program at all (the only execve is the driver's own).
func (h *harness) refused(t *testing.T, backend, action string, args []string, stdin []byte, wantErr string) {
	t.Helper()
	h.refusedPath(t, filepath.Join(h.repo, "drivers", backend, action), args, stdin, wantErr)
}

// refusedPath is refused for any driver executable (e.g. the downloaders).
func (h *harness) refusedPath(t *testing.T, drv string, args []string, stdin []byte, wantErr string, env ...string) {
	t.Helper()
	backend, action := filepath.Base(filepath.Dir(drv)), filepath.Base(drv)
	trace := filepath.Join(t.TempDir(), "execve")
	argv := append([]string{"-f", "-qq", "-e", "trace=execve", "-o", trace, "-u", "oneadmin", drv}, args...)
	cmd := exec.Command("strace", argv...)
	cmd.Env = h.driverEnv(env...)
	cmd.Dir = "/var/lib/one"
	cmd.Stdin = strings.NewReader(string(stdin))
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	if err == nil || code == 0 {
		t.Errorf("%s %s %q: exit 0, want a failure", backend, action, args)
		return
	}
	stderr := errb.String()
	if lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n"); len(lines) != 1 || lines[0] == "" {
		t.Errorf("%s %s %q: stderr should be one line, got %q", backend, action, args, stderr)
	}
	if !strings.Contains(stderr, wantErr) {
		t.Errorf("%s %s %q: stderr %q does not say %q", backend, action, args, stderr, wantErr)
	}
	if strings.Contains(stderr+out.String(), secretMarker) {
		t.Errorf("%s %s: the password appears in the output", backend, action)
	}
	data, _ := os.ReadFile(trace)
	var execs []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "execve(") && !strings.Contains(l, "ENOENT") {
			execs = append(execs, l)
		}
	}
	if len(execs) != 1 {
		t.Errorf("%s %s %q ran programs for invalid input:\n%s", backend, action, args, strings.Join(execs, "\n"))
	}
}
