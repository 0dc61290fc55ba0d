package one

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// Install locations. Each can be overridden by an environment variable, which the tests and
// operators with non-standard layouts use.

// RemotesDir is the frontend's copy of the drivers: $ONEBACKUP_REMOTES, else
// $ONE_LOCATION/var/remotes, else /var/lib/one/remotes.
func RemotesDir() string {
	if d := os.Getenv("ONEBACKUP_REMOTES"); d != "" {
		return d
	}
	if l := os.Getenv("ONE_LOCATION"); l != "" {
		return filepath.Join(l, "var", "remotes")
	}
	return "/var/lib/one/remotes"
}

// HostRemotesDir is where the drivers live on hypervisors and repository servers
// (SCRIPTS_REMOTE_DIR in oned.conf): $ONEBACKUP_HOST_REMOTES, else /var/tmp/one.
func HostRemotesDir() string {
	if d := os.Getenv("ONEBACKUP_HOST_REMOTES"); d != "" {
		return d
	}
	return "/var/tmp/one"
}

// RunDir holds the frontend's records of running backups (for backup_cancel):
// $ONEBACKUP_RUN_DIR, else $ONE_LOCATION/var/run/onebackup, else /var/run/one/onebackup.
func RunDir() string {
	if d := os.Getenv("ONEBACKUP_RUN_DIR"); d != "" {
		return d
	}
	if l := os.Getenv("ONE_LOCATION"); l != "" {
		return filepath.Join(l, "var", "run", "onebackup")
	}
	return "/var/run/one/onebackup"
}

// DatastoreConfPath is <remotes>/etc/datastore/datastore.conf (unlike the reference, it follows
// ONE_LOCATION).
func DatastoreConfPath() string {
	return filepath.Join(RemotesDir(), "etc", "datastore", "datastore.conf")
}

// LoadConf reads the NAME=VALUE pairs of a driver configuration file (datastore.conf, kvmrc).
// A missing file is an empty config.
// Accepted: blank lines, comments (first non-blank '#'), an optional "export", values in single or
// double quotes, and unquoted values followed by a " #" comment.
func LoadConf(path string) (map[string]string, error) {
	conf := map[string]string{}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return conf, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimSpace(strings.TrimPrefix(line, "export "))
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		conf[strings.TrimSpace(name)] = confValue(strings.TrimSpace(value))
	}
	return conf, sc.Err()
}

func confValue(v string) string {
	if len(v) > 0 && (v[0] == '"' || v[0] == '\'') {
		if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
			return v[1 : end+1]
		}
		return v[1:]
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = v[:i]
	}
	return strings.TrimSpace(v)
}
