package backend

import (
	"strings"
	"testing"
)

func TestParseForwardAgent(t *testing.T) {
	for attrs, want := range map[string]bool{
		"": true,
		"<RSYNC_FORWARD_AGENT>yes</RSYNC_FORWARD_AGENT>":  true,
		"<RSYNC_FORWARD_AGENT>NO</RSYNC_FORWARD_AGENT>":   false,
		"<RESTIC_FORWARD_AGENT>NO</RESTIC_FORWARD_AGENT>": true, // another backend's attribute
	} {
		got, err := ParseForwardAgent(datastore(t, attrs), "RSYNC")
		if err != nil || got != want {
			t.Errorf("%q: got %v, %v; want %v", attrs, got, err, want)
		}
	}
	_, err := ParseForwardAgent(datastore(t, "<RSYNC_FORWARD_AGENT>maybe;rm</RSYNC_FORWARD_AGENT>"), "RSYNC")
	if err == nil || !strings.Contains(err.Error(), "invalid RSYNC_FORWARD_AGENT") {
		t.Errorf("invalid value: %v", err)
	}
}
