package restic

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/checksum"
	"onebackup/internal/lockfile"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/remote"
)

// Exit codes of restic >= 0.17.
const (
	exitNoRepo        = 10
	exitLocked        = 11
	exitWrongPassword = 12
)

// defaultLockWait bounds how long a command waits for another one's exclusive lock (restic >=
// 0.16) unless RESTIC_LOCK_WAIT says otherwise.
const defaultLockWait = 5 * time.Minute

// Store is a configured restic datastore.
type Store struct {
	cfg *Config
	rt  *backend.Runtime

	versionOnce sync.Once
	minor       int // restic 0.<minor> on the frontend; 0 when unknown

	s3Once sync.Once
	s3Err  error // what the S3 endpoint check found (nil: usable)

	sumsMu sync.Mutex
	sums   map[string]checksum.Sums // checksum records read so far, by repository and snapshot
}

// ready checks, once per run, that the S3 endpoint can be used (nothing to check for SFTP,
// whose failures restic reports at once).
func (s *Store) ready(ctx context.Context) error {
	if s.cfg.S3 == nil {
		return nil
	}
	s.s3Once.Do(func() {
		s.rt.Planf("check S3 endpoint %s and bucket %s", s.cfg.S3.server(), s.cfg.S3.Bucket)
		s.s3Err = s.cfg.S3.check(ctx)
	})
	return s.s3Err
}

// Open validates the datastore's attributes.
func Open(ds *one.Datastore, rt *backend.Runtime) (backend.Store, error) {
	cfg, err := ParseConfig(ds)
	if err != nil {
		return nil, err
	}
	return &Store{cfg: cfg, rt: rt}, nil
}

// Backend implements backend.Store.
func (s *Store) Backend() string { return "restic" }

// FrontendBin is restic on the frontend, HostBin on hypervisors.
func FrontendBin() string { return filepath.Join(one.RemotesDir(), "datastore", "restic", "restic") }

// HostBin is restic on the hypervisors (synced there with the remotes).
func HostBin() string { return path.Join(one.HostRemotesDir(), "datastore", "restic", "restic") }

// cmd builds a restic command for target; lock-taking commands wait for a held lock.
func (s *Store) cmd(ctx context.Context, t remote.Target, repo, sub string, args ...string) remote.Cmd {
	bin := FrontendBin()
	if t.Host != "" {
		bin = HostBin()
	}
	if s.retryLock(ctx) && sub != "snapshots" && sub != "cat" && sub != "init" {
		args = append(args, "--retry-lock="+s.cfg.LockWait.String())
	}
	argv := append([]string{bin}, s.cfg.Args(repo, sub, args...)...)
	if s.cfg.S3 == nil && s.minor >= 17 {
		// restic's own ssh to the SFTP server gets the keep-alive of every driver connection,
		// so that a stalled server fails the backup (sftp.args: restic >= 0.17).
		argv = slices.Insert(argv, 1, "--option=sftp.args="+strings.Join(remote.KeepAlive, " "))
	}
	return remote.Cmd{Target: t, Argv: argv, Env: s.cfg.Env()}
}

// retryLock tells whether restic supports --retry-lock (>= 0.16).
func (s *Store) retryLock(ctx context.Context) bool {
	s.versionOnce.Do(func() {
		res, err := s.rt.Runner.Run(ctx, remote.Cmd{Target: remote.Local, Argv: []string{FrontendBin(), "version"}})
		if err == nil {
			if m := regexp.MustCompile(`restic 0\.([0-9]+)\.`).FindSubmatch(res.Stdout); m != nil {
				s.minor, _ = strconv.Atoi(string(m[1]))
			}
		}
	})
	return s.minor >= 16
}

// run runs restic on the frontend against a location's repository.
func (s *Store) run(ctx context.Context, loc backend.Location, mutates bool, sub string, args ...string) (*remote.Result, error) {
	res, err := s.rt.Run(ctx, s.cmd(ctx, remote.Local, s.cfg.Repo(loc), sub, args...), mutates)
	return res, s.explain(ctx, err, s.cfg.Repo(loc))
}

// explain turns restic's exit codes into errors an operator can act on.
func (s *Store) explain(ctx context.Context, err error, repo string) error {
	var ee *remote.ExitError
	if err == nil || !asExit(err, &ee) {
		return err
	}
	if probed := s.diagnoseSFTP(ctx, ee); probed != nil {
		return probed
	}
	switch {
	case ee.Code == exitWrongPassword || strings.Contains(ee.Stderr, "wrong password"):
		return fmt.Errorf("RESTIC_PASSWORD does not open repository %s", repo)
	// "unable to create lock in backend" alone is not a lock held by someone: restic says it too
	// when the connection broke while it wrote its own lock.
	case ee.Code == exitLocked || strings.Contains(ee.Stderr, "repository is already locked"):
		holder := "another operation"
		if m := lockHolderRe.FindStringSubmatch(ee.Stderr); m != nil {
			holder = fmt.Sprintf("restic PID %s on %s (user %s)", m[2], m[3], m[4])
			if m[1] != "" {
				holder += " holding it exclusively"
			}
			if at := lockCreatedRe.FindStringSubmatch(ee.Stderr); at != nil {
				holder += ", since " + at[1]
			}
		}
		return fmt.Errorf("repository %s stayed locked by %s for the %s this backup waits (RESTIC_LOCK_WAIT); if that process is gone, `restic unlock` on its host removes the lock: %w", repo, holder, s.cfg.LockWait, err)
	}
	return err
}

// diagnoseSFTP finds out why restic could not start its SFTP session when restic's own output
// does not say. restic relays its ssh child's stderr through a goroutine that may not get to run
// before restic exits on the error, so "Could not resolve hostname" and the like are sometimes
// lost and only "server unexpectedly closed connection" remains. One ssh run from the same place,
// to the same server, recovers the reason; it is made only after such a failure.
func (s *Store) diagnoseSFTP(ctx context.Context, ee *remote.ExitError) error {
	if s.cfg.S3 != nil || !strings.Contains(ee.Stderr, "unable to start the sftp session") ||
		remote.SSHProblem(ee.Stderr) != "" {
		return nil
	}
	// SSHArgs carry remote.KeepAlive, whose connect timeout bounds the probe.
	probe := append(s.rt.Runner.SSHArgs(remote.Target{Host: s.cfg.Server, User: s.cfg.User}, false), "true")
	_, perr := s.rt.Runner.Run(ctx, remote.Cmd{Target: ee.Target, Argv: probe})
	var pe *remote.ExitError
	if perr == nil || !asExit(perr, &pe) || remote.SSHProblem(pe.Stderr) == "" {
		return nil
	}
	withCause := *ee
	withCause.Stderr = strings.TrimRight(ee.Stderr, "\n") + "\n" + pe.Stderr
	return &withCause
}

// What restic prints about the holder of a lock it could not get.
var (
	lockHolderRe  = regexp.MustCompile(`locked (exclusively )?by PID ([0-9]+) on (\S+) by ([^\s(]+)`)
	lockCreatedRe = regexp.MustCompile(`lock was created at ([0-9-]+ [0-9:]+)`)
)

func asExit(err error, ee **remote.ExitError) bool { return errors.As(err, ee) }

// repoMissing tells a missing repository from other failures (exit 10 since restic 0.17,
// a message before).
func repoMissing(err error) bool {
	var ee *remote.ExitError
	if !asExit(err, &ee) {
		return false
	}
	return ee.Code == exitNoRepo || (ee.Code == 1 && (strings.Contains(ee.Stderr, "does not exist") ||
		strings.Contains(ee.Stderr, "Is there a repository at the following location?")))
}

// missingRepoError is a repository that does not exist (no backup of that VM or job yet).
type missingRepoError struct {
	repo string
	err  error
}

func (e *missingRepoError) Error() string { return "repository " + e.repo + " does not exist" }
func (e *missingRepoError) Unwrap() error { return e.err }

// EnsureRepo creates the location's repository unless it exists. Creation is serialised on the
// frontend, so that the first backups of several VMs of one backup job do not race.
func (s *Store) EnsureRepo(ctx context.Context, loc backend.Location) error {
	repo := s.cfg.Repo(loc)
	if err := s.ready(ctx); err != nil {
		return err
	}
	unlock, err := lockFile(ctx, fmt.Sprintf("restic-init-%d.lock", s.cfg.DSID))
	if err != nil {
		return err
	}
	defer unlock()
	// Reading the config needs no lock: a lock held (or left by a dead process) is the
	// business of the command that follows, which waits for it or reports its holder.
	_, err = s.rt.Run(ctx, s.cmd(ctx, remote.Local, repo, "cat", "config", "--no-lock"), false)
	if err == nil {
		return nil
	}
	if !repoMissing(err) {
		return fmt.Errorf("cannot open repository %s: %w", repo, s.explain(ctx, err, repo))
	}
	if !s.rt.DryRun {
		s.rt.Log.Infof("creating restic repository %s", repo)
	}
	if _, err := s.rt.Run(ctx, s.cmd(ctx, remote.Local, repo, "init"), true); err != nil {
		return fmt.Errorf("cannot create repository %s: %w", repo, err)
	}
	return nil
}

// lockFile takes an exclusive lock named name in the run directory.
func lockFile(ctx context.Context, name string) (func(), error) {
	dir := one.RunDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create the run directory: %v", err)
	}
	return lockfile.Acquire(ctx, filepath.Join(dir, name), 0)
}

// snapshot is one entry of `restic snapshots --json`.
type snapshot struct {
	ID    string   `json:"id"`
	Time  string   `json:"time"`
	Paths []string `json:"paths"`
	Tags  []string `json:"tags"`
}

// short is the 8-character id OpenNebula stores, derived from the full id (short_id is
// deprecated upstream).
func (sn snapshot) short() string {
	if len(sn.ID) < 8 {
		return sn.ID
	}
	return sn.ID[:8]
}

// snapshots lists every snapshot of a location's repository, oldest first.
func (s *Store) snapshots(ctx context.Context, loc backend.Location) ([]snapshot, error) {
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	res, err := s.run(ctx, loc, false, "snapshots", "--no-lock", "--json")
	if repoMissing(err) {
		return nil, &missingRepoError{repo: s.cfg.Repo(loc), err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("cannot list the snapshots of %s: %w", s.cfg.Repo(loc), err)
	}
	var out []snapshot
	if err := json.Unmarshal(res.Stdout, &out); err != nil {
		return nil, fmt.Errorf("unexpected output of restic snapshots: %v", err)
	}
	return out, nil
}

func (s *Store) find(ctx context.Context, loc backend.Location, snap string) (*snapshot, error) {
	all, err := s.snapshots(ctx, loc)
	if err != nil {
		return nil, err
	}
	for i := range all {
		if strings.HasPrefix(all[i].ID, snap) {
			return &all[i], nil
		}
	}
	return nil, fmt.Errorf("no snapshot %s in repository %s", snap, s.cfg.Repo(loc))
}

// Files implements backend.Store: the paths stored in a snapshot.
func (s *Store) Files(ctx context.Context, loc backend.Location, snap string) ([]string, error) {
	sn, err := s.find(ctx, loc, snap)
	if err != nil {
		return nil, err
	}
	files := append([]string(nil), sn.Paths...)
	sort.Strings(files)
	return files, nil
}

// ReadVMXML implements backend.Store: vm.xml sits beside the disk files in the snapshot.
func (s *Store) ReadVMXML(ctx context.Context, loc backend.Location, snap, diskPath string) ([]byte, error) {
	doc := path.Join(path.Dir(diskPath), "vm.xml")
	res, err := s.run(ctx, loc, false, "dump", "--quiet", snap, doc)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s from snapshot %s: %w", doc, snap, err)
	}
	return res.Stdout, nil
}

// ReadFile implements backend.FileReader: restic dump streamed to w, checked against the
// backup's checksum record as it passes.
func (s *Store) ReadFile(ctx context.Context, loc backend.Location, snap, file string, w io.Writer) error {
	sums, err := s.Sums(ctx, loc, snap, path.Dir(file))
	if err != nil {
		return err
	}
	c := sums.NewChecker(snap, file, w)
	if err := s.dump(ctx, loc, snap, file, c); err != nil {
		return err
	}
	return c.Check()
}

func (s *Store) dump(ctx context.Context, loc backend.Location, snap, file string, w io.Writer) error {
	c := s.cmd(ctx, remote.Local, s.cfg.Repo(loc), "dump", "--quiet", snap, file)
	c.Stdout = w
	if _, err := s.rt.Run(ctx, c, false); err != nil {
		if damage := damagedRe.FindString(remote.StderrOf(err)); damage != "" {
			return &checksum.CorruptError{Backup: snap, File: file,
				Detail: fmt.Sprintf("cannot be read back: the repository's data for it is damaged (restic: %s); `restic check --read-data` lists the damaged packs", damage)}
		}
		return fmt.Errorf("cannot read %s from snapshot %s: %w", file, snap, s.explain(ctx, err, s.cfg.Repo(loc)))
	}
	return nil
}

// damagedRe matches what restic says when a pack's content fails its own integrity checks
// (every blob is encrypted and authenticated, and addressed by its hash).
var damagedRe = regexp.MustCompile(`[^\n]*(ciphertext verification failed|hash mismatch|does not match the expected hash|wrong hash)[^\n]*`)

// Sums returns the checksum record of snapshot snap, whose files are in dir; nil when the backup
// has none (made before records existed, or by OpenNebula's drivers).
func (s *Store) Sums(ctx context.Context, loc backend.Location, snap, dir string) (checksum.Sums, error) {
	key := s.cfg.Repo(loc) + "@" + snap
	s.sumsMu.Lock()
	sums, ok := s.sums[key]
	s.sumsMu.Unlock()
	if ok {
		return sums, nil
	}
	sn, err := s.find(ctx, loc, snap)
	if err != nil {
		return nil, err
	}
	rec := path.Join(dir, checksum.File)
	if slices.Contains(sn.Paths, rec) {
		sums, err = checksum.ReadRecord(snap, rec, func(w io.Writer) error { return s.dump(ctx, loc, snap, rec, w) })
		if err != nil {
			return nil, err
		}
	}
	s.sumsMu.Lock()
	if s.sums == nil {
		s.sums = map[string]checksum.Sums{}
	}
	s.sums[key] = sums
	s.sumsMu.Unlock()
	return sums, nil
}

// Remove implements backend.Store: forget the snapshots that exist and prune.
func (s *Store) Remove(ctx context.Context, loc backend.Location, snaps []string) error {
	all, err := s.snapshots(ctx, loc)
	if err != nil {
		if repoMissing(err) {
			s.rt.Log.Infof("repository %s does not exist: nothing to remove", s.cfg.Repo(loc))
			return nil
		}
		return err
	}
	var ids []string
	for _, want := range snaps {
		for _, sn := range all {
			if strings.HasPrefix(sn.ID, want) {
				ids = append(ids, sn.short())
			}
		}
	}
	if len(ids) == 0 {
		s.rt.Log.Infof("snapshots %v are already gone from %s", snaps, s.cfg.Repo(loc))
		return nil
	}
	args := append(ids, "--prune")
	if s.cfg.PruneMaxRepack != "" {
		args = append(args, "--max-repack-size="+s.cfg.PruneMaxRepack)
	}
	if s.cfg.PruneMaxUnused != "" {
		// Unset, restic's own default applies (5 %): the reference's 0 repacks every
		// partly used pack under an exclusive lock on each removal (spec W19).
		args = append(args, "--max-unused="+s.cfg.PruneMaxUnused)
	}
	if _, err := s.run(ctx, loc, true, "forget", args...); err != nil {
		return fmt.Errorf("unable to remove snapshots %v: %w", ids, err)
	}
	return nil
}

// Usage implements backend.Store: the filesystem holding BASE_PATH on the SFTP server. S3 has
// no capacity to ask: used is what oned records for the datastore's backup images, total is
// TOTAL_MB (1 TiB when unset).
func (s *Store) Usage(ctx context.Context) (backend.Usage, error) {
	if s.cfg.S3 == nil {
		return backend.DiskUsage(ctx, s.rt, remote.Target{Host: s.cfg.Server, User: s.cfg.User}, s.cfg.BasePath)
	}
	s.rt.Planf("ask oned (one.imagepool.info) for the backup images of datastore %d", s.cfg.DSID)
	client, err := oned.New()
	if err != nil {
		return backend.Usage{}, fmt.Errorf("cannot reach oned for the backup images of datastore %d: %w", s.cfg.DSID, err)
	}
	pool, err := client.ImagePoolInfo(ctx)
	if err != nil {
		return backend.Usage{}, fmt.Errorf("cannot list the backup images of datastore %d: %w", s.cfg.DSID, err)
	}
	used, err := one.BackupImagesMB(pool, s.cfg.DSID)
	if err != nil {
		return backend.Usage{}, err
	}
	return backend.Usage{UsedMB: used, TotalMB: s.cfg.S3.TotalMB, FreeMB: max(s.cfg.S3.TotalMB-used, 0)}, nil
}
