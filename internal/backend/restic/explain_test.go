package restic

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"onebackup/internal/backend"
	"onebackup/internal/remote"
)

// restic sometimes exits before relaying its ssh child's stderr; the operator must still be told
// why the repository server could not be reached. The stderr below is what restic printed in such
// a run; the probe behind explain runs the real ssh client.
func TestExplainLostSSHReason(t *testing.T) {
	ds := datastore(t, map[string]string{"RESTIC_PASSWORD": "pw", "RESTIC_SFTP_SERVER": "bk-gone.invalid"})
	rt := &backend.Runtime{Runner: &remote.Runner{}, Log: logrus.New()}
	rt.Log.SetOutput(io.Discard)
	st, err := Open(ds, rt)
	if err != nil {
		t.Fatal(err)
	}
	repo := "sftp:oneadmin@bk-gone.invalid:/var/lib/one/datastores/300/92"
	lost := &remote.ExitError{Target: remote.Local, Prog: "restic", Code: 1,
		Stderr: "Fatal: unable to open repository at " + repo + ": unable to start the sftp session, " +
			"error: error receiving version packet from server: server unexpectedly closed connection: unexpected EOF\n"}
	got := st.(*Store).explain(context.Background(), lost, repo).Error()
	if !strings.Contains(got, "could not connect onwards: unknown host") {
		t.Fatalf("explained as %q", got)
	}

	// Any other failure is left as restic reported it, without a probe.
	other := &remote.ExitError{Target: remote.Local, Prog: "restic", Code: 1, Stderr: "Fatal: something else\n"}
	if got := st.(*Store).explain(context.Background(), other, repo); got != error(other) {
		t.Fatalf("an unrelated failure became %v", got)
	}
}
