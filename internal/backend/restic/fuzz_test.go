package restic

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"onebackup/internal/backend"
	"onebackup/internal/remote"
)

// What restic prints while it uploads (stdout, one JSON document per line) and when it fails
// (stderr) comes from a program on another host: nothing in it may crash the driver, and the
// backup id taken from it is a restic id or nothing.
func FuzzResticOutput(f *testing.F) {
	f.Add([]byte(`{"message_type":"status","percent_done":0.5,"total_bytes":100,"bytes_done":50}`+"\n"+
		`{"message_type":"summary","snapshot_id":"0123456789abcdef","total_bytes_processed":1024}`), "", 0)
	f.Add([]byte(`{"message_type":"error","error":{"message":"permission denied"},"item":"/x"}`), "unable to create lock in backend: repository is already locked exclusively by PID 12 on fe by oneadmin (UID 9869, GID 9869)\nlock was created at 2026-12-03 13:59:13 (8s ago)", 11)
	f.Add([]byte(`{"snapshot_id":"../../../x;rm","total_bytes_processed":1}`), "Fatal: wrong password or no key found", 12)
	f.Fuzz(func(t *testing.T, stdout []byte, stderr string, code int) {
		o := &uploadOutput{progress: func(float64, string) {}}
		for _, l := range bytes.Split(stdout, []byte("\n")) {
			o.line(l)
		}
		if id, _, err := o.result(remote.Target{Host: "hv1"}); err == nil && (len(id) != 8 || strings.Trim(id, "0123456789abcdef") != "") {
			t.Fatalf("backup id %q", id)
		}
		// An S3 store: explain never probes a server for these.
		rt := &backend.Runtime{Runner: &remote.Runner{SSH: "/nonexistent/ssh"}, Log: logrus.New()}
		rt.Log.SetOutput(io.Discard)
		st := &Store{cfg: &Config{S3: &S3Config{Bucket: "b"}, LockWait: defaultLockWait}, rt: rt}
		ee := &remote.ExitError{Target: remote.Target{Host: "hv1"}, Prog: "restic", Code: code, Stderr: stderr}
		if st.explain(context.Background(), ee, "s3:x/b/1") == nil {
			t.Fatal("a failure explained away")
		}
	})
}
