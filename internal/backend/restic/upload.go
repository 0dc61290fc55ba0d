package restic

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"onebackup/internal/backend"
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

	var summary *message
	var lastError string
	up := &backend.Upload{Cmd: c, Server: s.server(), SSH: s.cfg.S3 == nil}
	up.OnLine = func(line []byte) {
		var m message
		if json.Unmarshal(line, &m) != nil {
			return
		}
		switch {
		case m.Type == "summary" || (m.SnapshotID != "" && m.BytesRead > 0):
			summary = &m
		case m.Type == "status" && s.rt.Progress != nil:
			s.rt.Progress(m.PercentDone, fmt.Sprintf("%d/%d MiB", m.BytesDone>>20, m.TotalBytes>>20))
		case m.Type == "error":
			lastError = m.ErrorMessage.Message + " " + m.Item
		}
	}
	up.Result = func() (string, int64, error) {
		if summary == nil || len(summary.SnapshotID) < 8 {
			return "", 0, fmt.Errorf("restic backup on %s reported no snapshot %s", b.VMHost, lastError)
		}
		return summary.SnapshotID[:8], summary.BytesRead, nil
	}
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
