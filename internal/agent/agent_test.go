package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"testing"
	"time"
)

// cleanupScript finishes its own cleanup (two seconds) when it gets SIGTERM.
const cleanupScript = `trap 'sleep 2; exit 0' TERM; while :; do sleep 0.1; done`

// startTracked runs cleanupScript through Main under token with the given grace, and returns
// the channel Main's exit code arrives on once the program has started.
func startTracked(t *testing.T, token string, grace int) <-chan int {
	t.Helper()
	req, _ := json.Marshal(Request{Op: OpRun, Token: token, Argv: []string{"sh", "-c", cleanupScript}, Grace: grace})
	stdin, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	codes := make(chan int, 1)
	go func() {
		var out, errb bytes.Buffer
		codes <- Main(stdin, &out, &errb)
	}()
	w.Write(append(req, '\n'))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(pidFile(token)); err == nil {
			time.Sleep(300 * time.Millisecond) // let sh install its trap
			return codes
		}
		if time.Now().After(deadline) {
			t.Fatal("the tracked program never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKillGivesTheRequestedGrace(t *testing.T) {
	t.Setenv("ONEBACKUP_AGENT_STATE", t.TempDir())
	codes := startTracked(t, "grace-5", 5)
	if err := Kill("grace-5"); err != nil {
		t.Fatal(err)
	}
	if code := <-codes; code != 0 {
		t.Errorf("with a 5 s grace the program should finish its cleanup and exit 0, got %d", code)
	}
}

func TestKillEndsAProgramThatOutlivesItsGrace(t *testing.T) {
	t.Setenv("ONEBACKUP_AGENT_STATE", t.TempDir())
	codes := startTracked(t, "grace-1", 1)
	start := time.Now()
	if err := Kill("grace-1"); err != nil {
		t.Fatal(err)
	}
	if code := <-codes; code != 128+9 {
		t.Errorf("with a 1 s grace the program should be killed (137), got %d", code)
	}
	if _, err := os.Stat(pidFile("grace-1")); !os.IsNotExist(err) {
		t.Errorf("pid file left behind: %v", err)
	}
	t.Logf("killed after %s", time.Since(start).Round(time.Millisecond))
}

func TestGraceIsBounded(t *testing.T) {
	for in, want := range map[int]time.Duration{0: defaultGrace, -3: defaultGrace, 30: 30 * time.Second, 1 << 30: maxGrace} {
		if got := graceOf(in); got != want {
			t.Errorf("graceOf(%d) = %s, want %s", in, got, want)
		}
	}
}
