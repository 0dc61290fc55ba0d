// Package restic is the restic backup datastore: one restic repository per VM (or per backup
// job) on an SFTP server or in an S3 bucket, written by restic running on the VM host.
package restic

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// Config is a restic datastore's validated attributes.
type Config struct {
	DSID           int
	BasePath       string
	Password       string
	S3             *S3Config // nil: the SFTP backend
	Server, User   string    // SFTP repository host
	BWLimit        string    // KiB/s, "" = unlimited
	MaxProc        int       // GOMAXPROCS, -1 = restic's default
	Compression    string    // "" = restic's default (auto)
	Connections    int
	LockWait       time.Duration // RESTIC_LOCK_WAIT: how long to wait for another operation's lock
	PruneMaxRepack string
	PruneMaxUnused string
	TmpDir         string // parent of temporary directories of downloads and flattens (frontend)
	Sparsify       bool   // RESTIC_SPARSIFY: virt-sparsify merged images in increment_flatten
	Confine        backend.Confinement
	ForwardAgent   bool // forward the frontend's ssh agent to the VM host for uploads
}

var (
	repackRe = regexp.MustCompile(`^[0-9]+[kKmMgGtT]?$`)
	unusedRe = regexp.MustCompile(`^([0-9]+[kKmMgGtT%]?|unlimited)$`)
)

// ParseConfig reads the RESTIC_* attributes of a datastore. Empty attributes count as absent.
func ParseConfig(ds *one.Datastore) (*Config, error) {
	c, err := parseConfig(ds)
	if err != nil {
		return nil, fmt.Errorf("wrong restic datastore configuration: %w", err)
	}
	return c, nil
}

func parseConfig(ds *one.Datastore) (*Config, error) {
	c := &Config{MaxProc: -1, Connections: 5, LockWait: defaultLockWait}
	var err error
	if c.DSID, err = ds.ID(); err != nil {
		return nil, err
	}
	if c.BasePath, err = ds.BasePath(); err != nil {
		return nil, err
	}
	if c.Password = password(ds.RawAttr("RESTIC_PASSWORD")); c.Password == "" {
		return nil, fmt.Errorf("RESTIC_PASSWORD is not set")
	}
	one.RegisterSecret(c.Password)
	switch b := strings.ToUpper(ds.Attr("RESTIC_BACKEND")); b {
	case "", "SFTP":
		if c.Server = ds.Attr("RESTIC_SFTP_SERVER"); c.Server == "" {
			return nil, fmt.Errorf("RESTIC_SFTP_SERVER is not set")
		}
		if err := validate.Host("RESTIC_SFTP_SERVER", c.Server); err != nil {
			return nil, err
		}
		if c.User = ds.Attr("RESTIC_SFTP_USER"); c.User == "" {
			c.User = "oneadmin"
		}
		if err := validate.User("RESTIC_SFTP_USER", c.User); err != nil {
			return nil, err
		}
	case "S3":
		if c.S3, err = parseS3(ds); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown RESTIC_BACKEND %q (expected SFTP or S3)", ds.Attr("RESTIC_BACKEND"))
	}
	if v := ds.Attr("RESTIC_BWLIMIT"); v != "" {
		if _, err := strconv.ParseUint(v, 10, 32); err != nil {
			return nil, fmt.Errorf("invalid RESTIC_BWLIMIT %q: expected KiB/s as an integer", v)
		}
		c.BWLimit = v
	}
	if v := ds.Attr("RESTIC_MAXPROC"); v != "" && v != "-1" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("invalid RESTIC_MAXPROC %q: expected a positive integer", v)
		}
		c.MaxProc = n
	}
	if c.Sparsify, err = backend.ParseSparsify(ds, "RESTIC"); err != nil {
		return nil, err
	}
	switch v := strings.ToLower(ds.Attr("RESTIC_COMPRESSION")); v {
	case "", "auto":
	case "off", "max", "fastest", "better":
		c.Compression = v
	default:
		return nil, fmt.Errorf("invalid RESTIC_COMPRESSION %q: expected auto, off, fastest, better or max", v)
	}
	if v := ds.Attr("RESTIC_LOCK_WAIT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 24*time.Hour {
			return nil, fmt.Errorf("invalid RESTIC_LOCK_WAIT %q: expected a duration from 1s to 24h such as 5m", v)
		}
		c.LockWait = d
	}
	if v := ds.Attr("RESTIC_CONNECTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 128 {
			return nil, fmt.Errorf("invalid RESTIC_CONNECTIONS %q: expected an integer from 1 to 128", v)
		}
		c.Connections = n
	}
	if v := ds.Attr("RESTIC_PRUNE_MAX_REPACK"); v != "" {
		if !repackRe.MatchString(v) {
			return nil, fmt.Errorf("invalid RESTIC_PRUNE_MAX_REPACK %q: expected a size such as 500M", v)
		}
		c.PruneMaxRepack = v
	}
	if v := ds.Attr("RESTIC_PRUNE_MAX_UNUSED"); v != "" {
		if !unusedRe.MatchString(v) {
			return nil, fmt.Errorf("invalid RESTIC_PRUNE_MAX_UNUSED %q: expected a size, a percentage or unlimited", v)
		}
		c.PruneMaxUnused = v
	}
	c.TmpDir = "/var/tmp"
	if v := ds.Attr("RESTIC_TMP_DIR"); v != "" {
		if c.TmpDir, err = validate.AbsPath("RESTIC_TMP_DIR", v); err != nil {
			return nil, err
		}
	}
	if c.ForwardAgent, err = backend.ParseForwardAgent(ds, "RESTIC"); err != nil {
		return nil, err
	}
	c.Confine, err = backend.ParseConfinement(ds, "RESTIC", c.DSID)
	return c, err
}

// password applies OpenNebula's rule (kept so that existing repositories still open): on a
// one-line value, one leading and one trailing quote character are removed.
func password(v string) string {
	if strings.ContainsAny(v, "\n\r") {
		return v
	}
	if strings.HasPrefix(v, "'") || strings.HasPrefix(v, `"`) {
		v = v[1:]
	}
	if strings.HasSuffix(v, "'") || strings.HasSuffix(v, `"`) {
		v = v[:len(v)-1]
	}
	return v
}

// repoID names a location's repository: one per backup job (job_<id>), else one per VM; ""
// for the datastore as a whole.
func repoID(loc backend.Location) string {
	switch {
	case loc.JobID != "":
		return "job_" + loc.JobID
	case loc.VMID >= 0:
		return strconv.Itoa(loc.VMID)
	}
	return ""
}

// Repo is the restic address of a location's repository: under BASE_PATH on the SFTP server,
// or under the bucket in S3 (where OpenNebula puts them, so that either reads the other's).
func (c *Config) Repo(loc backend.Location) string {
	if c.S3 != nil {
		return c.S3.repo(repoID(loc))
	}
	return fmt.Sprintf("sftp:%s@%s:%s", c.User, c.Server, path.Join(c.BasePath, repoID(loc)))
}

// Env is the environment every restic run gets; it carries the secrets (the repository
// password, S3 keys), which never go on a command line.
func (c *Config) Env() map[string]string {
	env := map[string]string{"RESTIC_PASSWORD": c.Password}
	if c.MaxProc > 0 {
		env["GOMAXPROCS"] = strconv.Itoa(c.MaxProc)
	}
	if c.S3 != nil {
		c.S3.env(env)
	}
	return env
}

// Args renders a restic command line (without the binary) for a repository.
func (c *Config) Args(repo, sub string, args ...string) []string {
	out := []string{"--repo=" + repo}
	if c.BWLimit != "" {
		out = append(out, "--limit-upload="+c.BWLimit, "--limit-download="+c.BWLimit)
	}
	switch {
	case c.S3 != nil:
		out = append(out, c.S3.flags()...)
	case c.Connections != 5:
		out = append(out, "--option=sftp.connections="+strconv.Itoa(c.Connections))
	}
	if c.Compression != "" {
		out = append(out, "--compression="+c.Compression)
	}
	out = append(out, sub)
	return append(out, args...)
}
