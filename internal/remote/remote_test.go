package remote

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// failAfter accepts n bytes, then fails as a closed pipe does.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, syscall.EPIPE
	}
	f.n -= len(p)
	return len(p), nil
}

// A program whose reader went away is stopped with SIGTERM (restic then removes its lock)
// instead of being left blocked on a full pipe or killed by SIGPIPE.
func TestRunStopsProgramWhoseOutputCannotBeWritten(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "terminated")
	script := `trap 'touch "$0"; exit 3' TERM; while :; do echo 0123456789abcdef; done`
	r := &Runner{}
	_, err := r.Run(context.Background(), Cmd{Target: Local, Argv: []string{"bash", "-c", script, mark}, Stdout: &failAfter{n: 4096}})
	if err == nil || !strings.Contains(err.Error(), "bash on the frontend stopped: its output could not be written: broken pipe") {
		t.Fatalf("Run = %v", err)
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("the program did not get SIGTERM: %v", err)
	}
}
