package restic

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"onebackup/internal/backend"
	"onebackup/internal/remote"
)

// message is the part of restic's --json output the upload reads.
type message struct {
	Type         string  `json:"message_type"`
	PercentDone  float64 `json:"percent_done"`
	BytesDone    int64   `json:"bytes_done"`
	TotalBytes   int64   `json:"total_bytes"`
	SnapshotID   string  `json:"snapshot_id"`
	BytesRead    int64   `json:"total_bytes_processed"`
	ErrorMessage struct {
		Message string `json:"message"`
	} `json:"error"`
	Item string `json:"item"`
}

// uploadOutput follows what `restic backup --json` prints on stdout while it runs.
type uploadOutput struct {
	summary   *message
	lastError string
	progress  func(done float64, detail string)
}

func (o *uploadOutput) line(line []byte) {
	var m message
	if json.Unmarshal(line, &m) != nil {
		return
	}
	switch {
	case m.Type == "summary" || (m.SnapshotID != "" && m.BytesRead > 0):
		o.summary = &m
	case m.Type == "status" && o.progress != nil:
		o.progress(m.PercentDone, fmt.Sprintf("%d/%d MiB", m.BytesDone>>20, m.TotalBytes>>20))
	case m.Type == "error":
		o.lastError = m.ErrorMessage.Message + " " + m.Item
	}
}

// result is the backup id (the snapshot's short id) and the bytes read, once restic finished.
// The id goes to oned and comes back in every later command on the backup, so it must be what
// restic ids are: hexadecimal.
func (o *uploadOutput) result(host remote.Target) (string, int64, error) {
	if o.summary == nil || len(o.summary.SnapshotID) < 8 {
		return "", 0, fmt.Errorf("restic backup on %s reported no snapshot %s", host, o.lastError)
	}
	id := o.summary.SnapshotID[:8]
	if strings.Trim(id, "0123456789abcdef") != "" {
		return "", 0, fmt.Errorf("restic backup on %s reported the snapshot id %q, which is not a restic id", host, o.summary.SnapshotID)
	}
	return id, o.summary.BytesRead, nil
}

// PrepareUpload implements backend.Store: make sure the repository exists (from the frontend),
// then run `restic backup` of the staged files on the VM host, reaching the SFTP server with the
// frontend's forwarded ssh agent (or the host's own key, RESTIC_FORWARD_AGENT=NO), or S3
// directly with the datastore's keys (in the environment the far-side agent gets on stdin).
func (s *Store) PrepareUpload(ctx context.Context, b *backend.Backup) (*backend.Upload, error) {
	loc := b.Location()
	if err := s.EnsureRepo(ctx, loc); err != nil {
		return nil, err
	}
	repo := s.cfg.Repo(loc)
	if err := s.removeStaleLocks(ctx, b.VMHost, repo); err != nil {
		return nil, err
	}
	args := append(b.Paths(), "--force", "--json", "--tag=one-"+strconv.Itoa(b.Args.VMID))
	c := s.cmd(ctx, b.VMHost, repo, "backup", args...)
	fps := "0.2" // a status line every 5 s is enough for oned's logs
	if s.rt.Progress != nil {
		fps = "4"
	}
	c.Env["RESTIC_PROGRESS_FPS"] = fps
	names := make([]string, 0, len(c.Env))
	for k := range c.Env {
		names = append(names, k)
	}
	c.Argv = s.cfg.Confine.Wrap(c.Argv, b.Staging, names)
	c.ForwardAgent = s.forwardAgent()
	if s.cfg.Confine.String() != "none" {
		s.rt.Log.Infof("upload confined: %s", s.cfg.Confine)
	}

	out := &uploadOutput{progress: s.rt.Progress}
	up := &backend.Upload{Cmd: c, Server: s.server(), SSH: s.cfg.S3 == nil}
	up.OnLine = out.line
	up.Result = func() (string, int64, error) { return out.result(b.VMHost) }
	up.Explain = func(ctx context.Context, err error) error { return s.explain(ctx, err, repo) }
	up.Cleanup = func(ctx context.Context) error {
		// restic removes its own lock when stopped; unlock clears one left by a killed restic
		// (stale locks are recognised on the host that took them).
		unlock := s.cmd(ctx, b.VMHost, repo, "unlock")
		unlock.ForwardAgent = s.forwardAgent()
		if _, err := s.rt.Run(ctx, unlock, true); err != nil {
			return fmt.Errorf("cannot remove stale locks of %s: %w", repo, err)
		}
		return nil
	}
	return up, nil
}

// removeStaleLocks removes the locks of restic processes that died on host (killed during an
// earlier backup, or the host rebooted) before this backup waits for them: restic 0.18 still
// treats such a lock as held, so every later backup of the repository would wait and fail.
// `restic unlock` without --remove-all removes only locks it can prove stale (taken on this
// host by a process that no longer exists, or not refreshed for 30 minutes), never one of a
// live operation.
func (s *Store) removeStaleLocks(ctx context.Context, host remote.Target, repo string) error {
	c := s.cmd(ctx, host, repo, "unlock")
	c.ForwardAgent = s.forwardAgent()
	res, err := s.rt.Run(ctx, c, true)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Best effort: the upload that follows meets the same cause (no key, server down)
		// and reports it with its own explanation.
		s.rt.Log.Debugf("checking %s for stale locks failed: %v", repo, err)
		return nil
	}
	if res != nil {
		if m := removedLocksRe.FindSubmatch(res.Stdout); m != nil && string(m[1]) != "0" {
			s.rt.Log.Warnf("removed %s stale lock(s) of restic processes that died on %s from %s", m[1], host, repo)
		}
	}
	return nil
}

var removedLocksRe = regexp.MustCompile(`successfully removed ([0-9]+) locks`)

// forwardAgent: uploads to an SFTP server log in with the frontend's forwarded agent unless
// RESTIC_FORWARD_AGENT=NO; S3 needs no ssh from the VM host.
func (s *Store) forwardAgent() bool { return s.cfg.S3 == nil && s.cfg.ForwardAgent }

// server names where the repositories are, for messages.
func (s *Store) server() string {
	if s.cfg.S3 != nil {
		return s.cfg.S3.server()
	}
	return s.cfg.Server
}
