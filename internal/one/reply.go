package one

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// Exit codes toward oned, which only tells zero from non-zero.
const (
	ExitFailure     = 255 // a handled failure, as the reference's exit(-1)
	ExitUnsupported = 1   // an action a backup datastore does not implement
)

// BackupReply is backup's stdout: "<id> <size_mb> <format>".
func BackupReply(w io.Writer, id string, sizeBytes int64, format string) error {
	_, err := fmt.Fprintf(w, "%s %d %s\n", id, sizeBytes>>20, format)
	return err
}

// MonitorReply is monitor's stdout: three lines of plain integers in MiB.
func MonitorReply(w io.Writer, usedMB, totalMB, freeMB int64) error {
	_, err := fmt.Fprintf(w, "USED_MB=%d\nTOTAL_MB=%d\nFREE_MB=%d\n", usedMB, totalMB, freeMB)
	return err
}

var (
	secretsMu sync.Mutex
	secrets   []string
)

// RegisterSecret makes Redact hide s wherever it appears in errors and logs.
func RegisterSecret(s string) {
	if len(s) < 3 {
		return // too short to redact without mangling ordinary text; never printed anyway
	}
	secretsMu.Lock()
	secrets = append(secrets, s)
	secretsMu.Unlock()
}

// Redact replaces registered secrets in s.
func Redact(s string) string {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, sec := range secrets {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return s
}

// FailureLine turns an error into the single stderr line oned shows the user: redacted, with
// newlines folded so that oned does not concatenate fragments without separators.
func FailureLine(err error) string {
	msg := Redact(err.Error())
	parts := strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return strings.Join(parts, "; ")
}
