package restic

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/checksum"
	"onebackup/internal/remote"
)

// Flatten implements backend.Flattener on the frontend: pull the merge set into a private
// temporary directory laid out as <tmp>/<vm_id>/backup/ (so stored paths keep the layout URLs and
// stat rely on), merge each disk into a standalone image named as in the newest merged restore
// point, store it with the newest merged snapshot's time (in UTC, so it sorts where that one
// was), and only then forget the merged snapshots. A crash before the forget leaves the old
// chain untouched.
func (s *Store) Flatten(ctx context.Context, loc backend.Location, merge chain.Chain) (string, int64, error) {
	snaps, err := s.chainSnapshots(ctx, loc, merge)
	if err != nil {
		return "", 0, err
	}
	newest := snaps[len(snaps)-1]
	when, err := time.Parse(time.RFC3339Nano, newest.Time)
	if err != nil {
		return "", 0, fmt.Errorf("snapshot %s has an unreadable time %q", newest.short(), newest.Time)
	}
	if s.rt.DryRun {
		s.rt.Planf("would merge snapshots %v into one stored at %s UTC, then forget them", merge.Snaps(), when.UTC().Format(time.DateTime))
		return "", 0, nil
	}
	tmp := backend.NewTempName(s.cfg.TmpDir)
	out := filepath.Join(tmp, strconv.Itoa(loc.VMID), "backup")
	if err := os.MkdirAll(out, 0o700); err != nil {
		return "", 0, fmt.Errorf("cannot create a temporary directory: %v", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Mkdir(filepath.Join(tmp, "pieces"), 0o700); err != nil {
		return "", 0, err
	}

	var files []string
	var size int64
	for _, p := range newest.Paths {
		name := path.Base(p)
		idx := chain.DiskIndex(name)
		dst := filepath.Join(out, name)
		if name == checksum.File {
			continue // recorded anew below, for the merged images
		}
		if idx == "" || idx == "tpm" { // documents come from the newest restore point only
			if err := s.pull(ctx, loc, newest.short(), p, dst); err != nil {
				return "", 0, err
			}
			files = append(files, dst)
			continue
		}
		u := chain.URL{Path: p}
		merged, err := s.pullAndMerge(ctx, loc, snaps, idx, tmp, u)
		if err != nil {
			return "", 0, err
		}
		if err := os.Rename(merged, dst); err != nil {
			return "", 0, err
		}
		if s.cfg.Sparsify {
			s.rt.Sparsify(ctx, "RESTIC_SPARSIFY", remote.Local, dst)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(dst, &st); err == nil {
			size += st.Blocks * 512
		}
		files = append(files, dst)
	}
	// The merged images are new files: record their checksums (the pieces they were made of
	// were checked as they were pulled).
	if _, err := checksum.WriteDir(out); err != nil {
		return "", 0, fmt.Errorf("cannot record the checksums of the merged restore point: %w", err)
	}
	files = append(files, filepath.Join(out, checksum.File))
	sort.Strings(files)

	args := append(files, "--force", "--json", "--tag=one-"+strconv.Itoa(loc.VMID),
		"--time="+when.UTC().Format(time.DateTime))
	c := s.cmd(ctx, remote.Local, s.cfg.Repo(loc), "backup", args...)
	c.Env["TZ"] = "UTC"
	res, err := s.rt.Run(ctx, c, true)
	if err != nil {
		return "", 0, fmt.Errorf("cannot store the merged restore point: %w", s.explain(ctx, err, s.cfg.Repo(loc)))
	}
	id := summaryID(res.Stdout)
	if id == "" {
		return "", 0, fmt.Errorf("restic backup of the merged restore point reported no snapshot")
	}
	if err := s.Remove(ctx, loc, merge.Snaps()); err != nil {
		return "", 0, fmt.Errorf("merged restore point %s is stored, but the merged ones were not removed: %w", id, err)
	}
	return id, size, nil
}

// summaryID is the short id of the snapshot a `restic backup --json` run created.
func summaryID(out []byte) string {
	for _, line := range strings.Split(string(out), "\n") {
		var m message
		if json.Unmarshal([]byte(line), &m) == nil && m.Type == "summary" && len(m.SnapshotID) >= 8 {
			return m.SnapshotID[:8]
		}
	}
	return ""
}
