package restic

import (
	"context"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/checksum"
	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// VerifyBackup implements backend.Verifier: every recorded file is dumped and checked.
func (s *Store) VerifyBackup(ctx context.Context, loc backend.Location, snap string) (int, error) {
	sn, err := s.find(ctx, loc, snap)
	if err != nil {
		return 0, err
	}
	dir := ""
	for _, p := range sn.Paths {
		if chain.DiskIndex(path.Base(p)) != "" {
			dir = path.Dir(p)
			break
		}
	}
	if dir == "" {
		return 0, &checksum.CorruptError{Backup: sn.short(), File: "(its file list)", Detail: "holds no disk file"}
	}
	sums, err := s.Sums(ctx, loc, sn.short(), dir)
	if err != nil || sums == nil {
		return 0, err
	}
	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := path.Join(dir, n)
		if !slices.Contains(sn.Paths, p) {
			return 0, &checksum.CorruptError{Backup: sn.short(), File: p, Detail: "is recorded but missing from the snapshot"}
		}
		if err := s.ReadFile(ctx, loc, sn.short(), p, io.Discard); err != nil {
			return 0, err
		}
	}
	return len(names), nil
}

// CheckRepository implements backend.Verifier: restic check, which verifies the repository's
// structure and, with readData, that the packs read back with the hashes restic recorded.
func (s *Store) CheckRepository(ctx context.Context, loc backend.Location, readData string) (string, error) {
	args := []string{}
	if err := CheckReadData(readData); err != nil {
		return "", err
	}
	what := "restic check of repository " + s.cfg.Repo(loc)
	if readData != "" {
		args = append(args, "--read-data-subset="+readData)
		what += ", reading " + readData + " of its data"
	}
	if _, err := s.run(ctx, loc, false, "check", args...); err != nil {
		if stderr := remote.StderrOf(err); strings.Contains(stderr, "repository contains errors") {
			return "", &checksum.DamagedError{Repository: s.cfg.Repo(loc), Detail: "restic check: " + one.OneLine(remote.LastLines(stderr, 4))}
		}
		return "", fmt.Errorf("cannot check repository %s: %w", s.cfg.Repo(loc), err)
	}
	return what, nil
}

// CheckReadData accepts the forms of restic's --read-data-subset ("" reads no data).
func CheckReadData(s string) error {
	if s != "" && !readDataRe.MatchString(s) {
		return fmt.Errorf("%q is not a subset restic can read (examples: 10%%, 1/5, 2G)", s)
	}
	return nil
}

var readDataRe = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?%|[0-9]+/[0-9]+|[0-9]+[KMGT]?)$`)
