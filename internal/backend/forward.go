package backend

import (
	"errors"
	"fmt"
	"strings"

	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// ParseForwardAgent reads <prefix>_FORWARD_AGENT. YES (the default, as the reference drivers
// do) forwards the frontend's ssh agent to the VM host for the upload. NO keeps oneadmin's
// identity on the frontend: each host logs in to the backup server with its own key, which the
// server can restrict to the repository (spec W6).
func ParseForwardAgent(ds *one.Datastore, prefix string) (bool, error) {
	name := prefix + "_FORWARD_AGENT"
	switch v := strings.ToUpper(ds.Attr(name)); v {
	case "", "YES":
		return true, nil
	case "NO":
		return false, nil
	default:
		return false, fmt.Errorf("invalid %s %q: expected YES or NO", name, ds.Attr(name))
	}
}

// explainOwnCredentials says what the operator has to set up when an upload without a forwarded
// agent could not log in to the backup server (nil when that is not what happened). ssh's own
// "Permission denied" is the sign, but restic passes its ssh's stderr on only when it read it
// before giving up (a race it often loses), so its "unable to start the sftp session" counts
// too; the detail appended names the cause either way.
func explainOwnCredentials(err, cleanupErr error, up *Upload, backend string) error {
	var ee *remote.ExitError
	if !up.SSH || up.Cmd.ForwardAgent || !errors.As(err, &ee) {
		return nil
	}
	refused := func(s string) bool {
		return strings.Contains(s, "Permission denied") || strings.Contains(s, "unable to start the sftp session")
	}
	if !refused(ee.Stderr) && (cleanupErr == nil || !refused(cleanupErr.Error())) {
		return nil
	}
	host := up.Cmd.Target.String()
	return fmt.Errorf("%s has no ssh key of its own for %s (%s_FORWARD_AGENT=NO): give oneadmin on %s a key that %s accepts, or forward the agent: %s",
		host, up.Server, strings.ToUpper(backend), host, up.Server, remote.LastLines(ee.Stderr, 3))
}
