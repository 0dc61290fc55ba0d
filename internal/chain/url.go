package chain

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"

	"onebackup/internal/validate"
)

// URL is a backup URL: <scheme>://<ds_id>/<bj_id>/<chain><absolute file path>.
type URL struct {
	Backend string // restic or rsync
	RBD     bool   // legacy Ceph chain (scheme suffix +rbd)
	DSID    int
	JobID   string // "" when the VM was not backed up by a job
	Chain   Chain
	Path    string
}

var pathComponentRe = regexp.MustCompile(`^[A-Za-z0-9._+-]+$`)

var diskFileRe = regexp.MustCompile(`^disk\.([0-9]+|tpm)\.`)

// String renders the URL.
func (u URL) String() string {
	scheme := u.Backend
	if u.RBD {
		scheme += "+rbd"
	}
	return fmt.Sprintf("%s://%d/%s/%s%s", scheme, u.DSID, u.JobID, u.Chain, u.Path)
}

// DiskIndex is the second dot-separated field of the file name ("0", "1", … or "tpm").
func (u URL) DiskIndex() string {
	return DiskIndex(path.Base(u.Path))
}

// DiskIndex returns the disk id of a staged or stored file name (disk.<id>.<inc>…), or "".
func DiskIndex(name string) string {
	m := diskFileRe.FindStringSubmatch(name)
	if m == nil {
		return ""
	}
	return m[1]
}

var (
	resticPathRe = regexp.MustCompile(`/([0-9]+)/backup/disk\.[0-9a-z]+\.[^/]+$`)
	rsyncPathRe  = regexp.MustCompile(`/([0-9]+)/([0-9]+)/([^/]+)/disk\.[0-9a-z]+\.[^/]+$`)
)

// VMID is the VM id encoded in the file path (required by the layout of each backend).
func (u URL) VMID() (int, error) {
	if u.Backend == "restic" {
		m := resticPathRe.FindStringSubmatch(u.Path)
		if m == nil {
			return 0, fmt.Errorf("backup URL path %q does not end in /<vm_id>/backup/disk.<id>.<inc>", u.Path)
		}
		return strconv.Atoi(m[1])
	}
	m := rsyncPathRe.FindStringSubmatch(u.Path)
	if m == nil {
		return 0, fmt.Errorf("backup URL path %q does not end in /<ds_id>/<vm_id>/<backup_id>/disk.<id>.<inc>", u.Path)
	}
	return strconv.Atoi(m[2])
}

// ParseURL parses and strictly validates a backup URL: known scheme, integer ids, snapshot ids of
// the backend's form, and a clean absolute path to a disk file of the backend's layout.
func ParseURL(s string) (URL, error) {
	var u URL
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return u, fmt.Errorf("invalid backup URL %q: no scheme", s)
	}
	switch scheme {
	case "restic", "rsync":
		u.Backend = scheme
	case "restic+rbd", "rsync+rbd":
		u.Backend, u.RBD = strings.TrimSuffix(scheme, "+rbd"), true
	default:
		return u, fmt.Errorf("invalid backup URL: unknown scheme %q", scheme)
	}
	parts := strings.SplitN(rest, "/", 4)
	if len(parts) != 4 {
		return u, fmt.Errorf("invalid backup URL %q: expected %s://<ds_id>/<bj_id>/<chain>/<path>", s, scheme)
	}
	var err error
	if u.DSID, err = validate.ID("datastore id in backup URL", parts[0]); err != nil {
		return u, err
	}
	if parts[1] != "" {
		if _, err := validate.ID("backup job id in backup URL", parts[1]); err != nil {
			return u, err
		}
		u.JobID = parts[1]
	}
	if u.Chain, err = Parse(parts[2]); err != nil {
		return u, err
	}
	if err := u.Chain.Validate(u.Backend); err != nil {
		return u, err
	}
	p, err := validate.AbsPath("file path in backup URL", "/"+parts[3])
	if err != nil {
		return u, err
	}
	if p != "/"+parts[3] {
		return u, fmt.Errorf("invalid backup URL: file path %q is not clean", "/"+parts[3])
	}
	for _, c := range strings.Split(p[1:], "/") {
		if !pathComponentRe.MatchString(c) {
			return u, fmt.Errorf("invalid backup URL: path component %q has characters outside [A-Za-z0-9._+-]", c)
		}
	}
	u.Path = p
	if u.DiskIndex() == "" {
		return u, fmt.Errorf("invalid backup URL: %q is not a disk file of a backup", path.Base(p))
	}
	if _, err := u.VMID(); err != nil {
		return u, err
	}
	return u, nil
}
