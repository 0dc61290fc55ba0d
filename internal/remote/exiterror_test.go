package remote

import (
	"strings"
	"testing"
)

func TestExitErrorNamesWhatFailed(t *testing.T) {
	hv1 := Target{Host: "hv1"}
	for _, c := range []struct {
		err  ExitError
		want string
	}{
		{ExitError{Target: hv1, Prog: "rsync", Code: 255, Stderr: "oneadmin@hv1: Permission denied (publickey).\n"},
			"ssh to hv1 failed: authentication refused"},
		{ExitError{Target: hv1, Prog: "rsync", Code: 255, Stderr: "ssh: connect to host hv1 port 22: Connection refused\n"},
			"ssh to hv1 failed: host unreachable"},
		{ExitError{Target: hv1, Prog: "rsync", Code: 255, Stderr: "kex_exchange_identification: read: Connection reset\n"},
			"ssh to hv1 failed: connection failed"},
		// The program ran (the agent says it exited with 255); its own ssh to the next host failed.
		{ExitError{Target: hv1, Prog: "rsync", Code: 255, Stderr: "oneadmin@bk1: Permission denied (publickey).\n" +
			"rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n" +
			"onebackup agent: rsync exited with code 255\n"},
			"rsync on hv1 could not connect onwards: authentication refused"},
		{ExitError{Target: Local, Prog: "restic", Code: 1, Stderr: "subprocess ssh: ssh: Could not resolve hostname bk9: Name or service not known\n" +
			"Fatal: unable to open repository at sftp:oneadmin@bk9:/x: unable to start the sftp session, error: EOF\n"},
			"restic on the frontend could not connect onwards: unknown host"},
		{ExitError{Target: hv1, Prog: "rm", Code: 1, Stderr: "rm: cannot remove '/x': Permission denied\n"},
			"rm on hv1 exited with code 1"},
		{ExitError{Target: hv1, Prog: "onebackup", Code: 127, Stderr: "sh: 1: /var/tmp/one/datastore/onebackup: not found\n"},
			"onebackup is not installed on hv1"},
		{ExitError{Target: hv1, Prog: "qemu-img", Code: 127, Stderr: "onebackup agent: qemu-img: executable file not found in $PATH\n"},
			"qemu-img not found on hv1"},
	} {
		if got := c.err.Error(); !strings.HasPrefix(got, c.want) {
			t.Errorf("%q exit %d: got %q, want it to start with %q", c.err.Stderr, c.err.Code, got, c.want)
		}
	}
}
