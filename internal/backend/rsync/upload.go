package rsync

import (
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/remote"
)

// idAttempts bounds the retries when a new backup id names an existing directory.
const idAttempts = 5

// rsh is the remote shell rsync uses from the VM host to the rsync host. rsync splits it into
// words itself (no shell); BatchMode makes a missing key fail instead of waiting for a password,
// the keep-alive a stalled rsync host end the upload.
var rsh = "ssh -T -o BatchMode=yes -o ControlMaster=no -o ControlPath=none " + strings.Join(remote.KeepAlive, " ")

// PrepareUpload implements backend.Store: create <BASE_PATH>/<vm_id>/<backup_id> on the rsync
// host (a new, unused id), then run rsync of the staging directory into it on the VM host,
// reaching the rsync host with the frontend's forwarded ssh agent (or the host's own key,
// RSYNC_FORWARD_AGENT=NO).
func (s *Store) PrepareUpload(ctx context.Context, b *backend.Backup) (*backend.Upload, error) {
	vmDir, err := s.vmDir(b.Args.VMID)
	if err != nil {
		return nil, err
	}
	if _, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"mkdir", "-p", "--", vmDir}}, true); err != nil {
		return nil, fmt.Errorf("cannot create %s on %s: %w", vmDir, s.target(), err)
	}
	id, dest, err := s.newBackupDir(ctx, b.Args.VMID)
	if err != nil {
		return nil, err
	}
	if !remotePathRe.MatchString(dest) {
		// Cannot happen with a checked BASE_PATH and id; kept next to the use that needs it:
		// the remote rsync may hand this path to a shell.
		return nil, fmt.Errorf("unsafe rsync destination %q", dest)
	}

	argv := []string{"rsync", "--rsh=" + rsh}
	argv = append(argv, s.cfg.Args...)
	argv = append(argv, "--", b.Staging+"/", s.remoteSpec(dest)+"/")
	c := remote.Cmd{
		Target:       b.VMHost,
		Argv:         s.cfg.Confine.Wrap(argv, b.Staging, []string{"SSH_AUTH_SOCK"}),
		Agent:        true,
		ForwardAgent: s.cfg.ForwardAgent,
	}
	if s.cfg.Confine.String() != "none" {
		s.rt.Log.Infof("upload confined: %s", s.cfg.Confine)
	}
	s.rt.Log.Infof("backup %s of VM %d goes to %s:%s", id, b.Args.VMID, s.target(), dest)

	up := &backend.Upload{Cmd: c, Server: s.target().Host, SSH: true}
	// rsync's own output (with -v, --progress, --out-format…) is informational only: the result
	// does not depend on it.
	up.OnLine = func(line []byte) {
		if l := strings.TrimSpace(string(line)); l != "" {
			s.rt.Log.Debugf("rsync: %s", l)
		}
	}
	up.Result = func() (string, int64, error) { return id, allocatedMiB(b), nil }
	up.Leftover = dest
	up.Cleanup = func(ctx context.Context) error {
		if err := s.removeDirs(ctx, []string{dest}); err != nil {
			return fmt.Errorf("cannot remove the partial backup %s on %s: %w", dest, s.target(), err)
		}
		return nil
	}
	return up, nil
}

// RemoveLeftover implements backend.LeftoverRemover: the backup directory of a backup that was
// killed during its upload. Only a path of the form <BASE_PATH>/<vm_id>/<backup id> is removed.
func (s *Store) RemoveLeftover(ctx context.Context, leftover string) error {
	vmDir, id := path.Split(leftover)
	vm := path.Base(path.Clean(vmDir))
	vmID, err := strconv.Atoi(vm)
	if err != nil {
		return fmt.Errorf("refusing to remove %q: not a backup directory", leftover)
	}
	want, err := s.backupDir(vmID, id)
	if err != nil || want != leftover {
		return fmt.Errorf("refusing to remove %q: not a backup directory of this datastore", leftover)
	}
	return s.removeDirs(ctx, []string{leftover})
}

// newBackupDir creates the directory of a new backup with a random 6-hex-char id. mkdir without
// -p fails on an existing directory: an id already in use is detected and another one drawn.
func (s *Store) newBackupDir(ctx context.Context, vmID int) (id, dir string, err error) {
	for attempt := 0; attempt < idAttempts; attempt++ {
		id = backend.RandomHex(3)
		if dir, err = s.backupDir(vmID, id); err != nil {
			return "", "", err
		}
		_, err = s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"mkdir", "--", dir}}, true)
		if err == nil {
			return id, dir, nil
		}
		if ctx.Err() != nil {
			// Cancelled while mkdir ran: it may have created the directory on the far side.
			// rmdir removes it only while empty, so a backup that already had this id is safe.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			s.rt.Run(cctx, remote.Cmd{Target: s.target(), Argv: []string{"rmdir", "--", dir}}, true)
			return "", "", err
		}
		if !strings.Contains(remote.StderrOf(err), "File exists") {
			return "", "", fmt.Errorf("cannot create the backup directory %s on %s: %w", dir, s.target(), err)
		}
		s.rt.Log.Infof("backup id %s of VM %d is already in use, drawing another one", id, vmID)
	}
	return "", "", fmt.Errorf("cannot find an unused backup id in %s on %s after %d attempts", path.Dir(dir), s.target(), idAttempts)
}

// remoteSpec is [user@]host:dir for rsync; IPv6 addresses go in brackets.
func (s *Store) remoteSpec(dir string) string {
	host := s.cfg.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return s.cfg.User + "@" + host + ":" + dir
}

// allocatedMiB is the size reported to oned: the disk space the staged files take (allocated
// blocks, as du counts them, so sparse images count what they hold), rounded up to whole MiB
// like the reference's `du -sm` and returned in bytes.
func allocatedMiB(b *backend.Backup) int64 {
	var n int64
	for _, f := range b.Files {
		n += f.Allocated
	}
	const mib = 1 << 20
	return (n + mib - 1) / mib * mib
}
