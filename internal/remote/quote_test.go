package remote

import (
	"os/exec"
	"strings"
	"testing"
)

// The quoting is checked against a real shell: whatever goes in comes out unchanged, and
// nothing in it is interpreted.
func TestQuoteRoundTripsThroughSh(t *testing.T) {
	args := []string{"plain", "", " spaces  and\ttabs ", "it's", `"double"`, "$HOME", "$(touch /tmp/quote-pwned)",
		"`id`", "a;b|c&d>e<f", "new\nline", `back\slash`, "*", "~", "!event", "'", "''", "-n", "--"}
	line, err := Quote(append([]string{"printf", `%s\0`}, args...))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", line).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if len(got) != len(args) {
		t.Fatalf("got %d arguments back, want %d: %q", len(got), len(args), got)
	}
	for i := range args {
		if got[i] != args[i] {
			t.Errorf("argument %d: got %q, want %q", i, got[i], args[i])
		}
	}
}

func TestQuoteRefusesNUL(t *testing.T) {
	if _, err := Quote([]string{"a\x00b"}); err == nil {
		t.Fatal("a NUL byte was accepted")
	}
	if _, err := Quote(nil); err == nil {
		t.Fatal("an empty command was accepted")
	}
}
