// Package validate checks values that come from oned, an operator or a URL before they reach a
// command line. Every check is strict: what it does not recognise is refused, never escaped.
package validate

import (
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
)

var (
	hostRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,252}[A-Za-z0-9])?$`)
	ipv6Re  = regexp.MustCompile(`^[0-9A-Fa-f:.]+$`)
	userRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)
	tokenRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// ID checks a non-negative integer id (VM, datastore, image, backup job).
func ID(what, s string) (int, error) {
	if s == "" || len(s) > 10 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("invalid %s %q: expected a non-negative integer", what, s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("invalid %s %q: %v", what, s, err)
	}
	return n, nil
}

// Host checks a host name or IP address usable as an ssh destination.
func Host(what, s string) error {
	if hostRe.MatchString(s) || (strings.Contains(s, ":") && ipv6Re.MatchString(s)) {
		return nil
	}
	return fmt.Errorf("invalid %s %q: expected a host name or IP address", what, s)
}

// User checks a POSIX user name.
func User(what, s string) error {
	if userRe.MatchString(s) {
		return nil
	}
	return fmt.Errorf("invalid %s %q: expected a user name", what, s)
}

// Token checks a name made only of safe characters (deploy ids, process tokens, file names).
func Token(what, s string) error {
	if tokenRe.MatchString(s) {
		return nil
	}
	return fmt.Errorf("invalid %s %q: only letters, digits, '.', '_' and '-' are allowed", what, s)
}

// AbsPath checks an absolute path without "..", control characters or shell-hostile bytes, and
// returns it cleaned (duplicate slashes and "." removed).
func AbsPath(what, p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("invalid %s %q: expected an absolute path", what, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("invalid %s %q: control characters are not allowed", what, p)
		}
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("invalid %s %q: '..' is not allowed", what, p)
		}
	}
	return path.Clean(p), nil
}

// Within reports whether the cleaned path p lies strictly below the cleaned directory dir.
func Within(p, dir string) bool {
	return strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
