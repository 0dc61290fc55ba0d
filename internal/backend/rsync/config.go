// Package rsync is the rsync backup datastore: one directory per backup under
// <BASE_PATH>/<vm_id>/<backup_id>/ on the rsync host, written by rsync running on the VM host.
package rsync

import (
	"fmt"
	"regexp"
	"strings"

	"onebackup/internal/backend"
	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// DefaultArgs is RSYNC_ARGS when the attribute is unset.
const DefaultArgs = "-aS"

// Config is an rsync datastore's validated attributes.
type Config struct {
	DSID         int
	BasePath     string // cleaned; the same path on the rsync host
	Host         string // RSYNC_HOST
	User         string // RSYNC_USER (default oneadmin)
	Args         []string
	TmpDir       string // RSYNC_TMP_DIR, used by the downloader
	Sparsify     bool   // RSYNC_SPARSIFY, used by increment_flatten
	Confine      backend.Confinement
	ForwardAgent bool // forward the frontend's ssh agent to the VM host for uploads
}

// remotePathRe is what a path may hold when it is handed to the remote rsync after "host:".
// rsync >= 3.2.4 backslash-escapes shell-active characters of such paths, but not the wildcards
// *?[], and older receivers or --old-args would not escape at all: a path reaching a remote
// shell is therefore limited to characters no shell interprets.
var remotePathRe = regexp.MustCompile(`^/[A-Za-z0-9._+,@=%/-]*$`)

// ParseConfig reads the RSYNC_* attributes of a datastore. Empty attributes count as absent.
func ParseConfig(ds *one.Datastore) (*Config, error) {
	c, err := parseConfig(ds)
	if err != nil {
		return nil, fmt.Errorf("wrong rsync datastore configuration: %w", err)
	}
	return c, nil
}

func parseConfig(ds *one.Datastore) (*Config, error) {
	c := &Config{}
	var err error
	if c.DSID, err = ds.ID(); err != nil {
		return nil, err
	}
	if c.BasePath, err = ds.BasePath(); err != nil {
		return nil, err
	}
	if !remotePathRe.MatchString(c.BasePath) || c.BasePath == "/" {
		return nil, fmt.Errorf("datastore BASE_PATH %q cannot be used on the rsync host: only letters, digits and . _ + , @ = %% / - are allowed", c.BasePath)
	}
	if c.Host = ds.Attr("RSYNC_HOST"); c.Host == "" {
		return nil, fmt.Errorf("RSYNC_HOST is not set")
	}
	if err := validate.Host("RSYNC_HOST", c.Host); err != nil {
		return nil, err
	}
	// The reference defaults RSYNC_USER in some actions only; here it is oneadmin everywhere.
	if c.User = ds.Attr("RSYNC_USER"); c.User == "" {
		c.User = "oneadmin"
	}
	if err := validate.User("RSYNC_USER", c.User); err != nil {
		return nil, err
	}
	args := ds.Attr("RSYNC_ARGS")
	if args == "" {
		args = DefaultArgs
	}
	if c.Args, err = ParseArgs(args); err != nil {
		return nil, err
	}
	c.TmpDir = "/var/tmp"
	if v := ds.Attr("RSYNC_TMP_DIR"); v != "" {
		if c.TmpDir, err = validate.AbsPath("RSYNC_TMP_DIR", v); err != nil {
			return nil, err
		}
	}
	if c.Sparsify, err = backend.ParseSparsify(ds, "RSYNC"); err != nil {
		return nil, err
	}
	if c.ForwardAgent, err = backend.ParseForwardAgent(ds, "RSYNC"); err != nil {
		return nil, err
	}
	c.Confine, err = backend.ParseConfinement(ds, "RSYNC", c.DSID)
	return c, err
}

// Option arity and verdicts. RSYNC_ARGS is checked against an allow list built from rsync 3.x's
// option table: an option must be known to be harmless to pass. Everything else is refused,
// with the reason when the option is known to be dangerous.
type optKind int

const (
	flag   optKind = iota // takes no value
	valued                // takes a value (--opt=v, --opt v, -Xv, -X v)
)

type optRule struct {
	kind   optKind
	refuse string // non-empty: refused, and why
}

const (
	runsCommand  = "it runs a program"
	outsideFiles = "it reads or writes files outside the backup's source and destination"
	deletes      = "it deletes files"
	incomplete   = "it would leave files out of the backup or copy nothing"
	layout       = "it changes the backup's layout on the rsync host"
	weakens      = "it weakens rsync's own protections"
	driverOwned  = "the driver sets it itself"
)

// longOpts maps long option names (without "--") to their rule.
var longOpts = map[string]optRule{
	// harmless: verbosity, output, transfer tuning, metadata
	"verbose": {}, "info": {kind: valued}, "debug": {kind: valued}, "stderr": {kind: valued},
	"quiet": {}, "no-motd": {}, "checksum": {}, "archive": {}, "recursive": {},
	"inc-recursive": {}, "i-r": {}, "no-inc-recursive": {}, "no-i-r": {},
	"update": {}, "inplace": {}, "append": {}, "append-verify": {}, "dirs": {},
	"old-dirs": {}, "old-d": {}, "mkpath": {}, "links": {}, "safe-links": {},
	"munge-links": {}, "confine-root": {kind: valued}, "keep-dirlinks": {},
	"hard-links": {}, "perms": {}, "executability": {}, "chmod": {kind: valued},
	"acls": {}, "xattrs": {}, "owner": {}, "group": {}, "devices": {}, "specials": {},
	"drop-D": {}, "times": {}, "atimes": {}, "open-noatime": {}, "crtimes": {},
	"omit-dir-times": {}, "omit-link-times": {}, "super": {}, "fake-super": {},
	"sparse": {}, "preallocate": {}, "whole-file": {}, "no-whole-file": {}, "no-W": {},
	"checksum-choice": {kind: valued}, "cc": {kind: valued}, "one-file-system": {},
	"block-size": {kind: valued}, "ignore-existing": {}, "ignore-errors": {}, "force": {},
	"max-delete": {kind: valued}, "max-alloc": {kind: valued}, "partial": {},
	"delay-updates": {}, "prune-empty-dirs": {}, "numeric-ids": {},
	"usermap": {kind: valued}, "groupmap": {kind: valued}, "chown": {kind: valued},
	"timeout": {kind: valued}, "contimeout": {kind: valued}, "ignore-times": {},
	"size-only": {}, "modify-window": {kind: valued}, "fuzzy": {}, "compress": {},
	"compress-choice": {kind: valued}, "zc": {kind: valued},
	"compress-level": {kind: valued}, "zl": {kind: valued},
	"compress-threads": {kind: valued}, "zt": {kind: valued},
	"skip-compress": {kind: valued}, "from0": {}, "secluded-args": {}, "protect-args": {},
	"address": {kind: valued}, "port": {kind: valued}, "sockopts": {kind: valued},
	"blocking-io": {}, "outbuf": {kind: valued}, "stats": {}, "8-bit-output": {},
	"human-readable": {}, "progress": {}, "itemize-changes": {},
	"out-format": {kind: valued}, "log-format": {kind: valued},
	"log-file-format": {kind: valued}, "bwlimit": {kind: valued},
	"stop-after": {kind: valued}, "time-limit": {kind: valued}, "stop-at": {kind: valued},
	"fsync": {}, "protocol": {kind: valued}, "iconv": {kind: valued},
	"checksum-seed": {kind: valued}, "ipv4": {}, "ipv6": {}, "no-implied-dirs": {},

	// refused
	"rsh":                 {kind: valued, refuse: runsCommand},
	"rsync-path":          {kind: valued, refuse: runsCommand},
	"remote-option":       {kind: valued, refuse: "it passes options to the remote rsync unchecked"},
	"daemon":              {refuse: runsCommand},
	"server":              {refuse: driverOwned},
	"sender":              {refuse: driverOwned},
	"config":              {kind: valued, refuse: outsideFiles},
	"dparam":              {kind: valued, refuse: outsideFiles},
	"files-from":          {kind: valued, refuse: outsideFiles},
	"include-from":        {kind: valued, refuse: outsideFiles},
	"exclude-from":        {kind: valued, refuse: outsideFiles},
	"log-file":            {kind: valued, refuse: outsideFiles},
	"password-file":       {kind: valued, refuse: outsideFiles},
	"early-input":         {kind: valued, refuse: outsideFiles},
	"write-batch":         {kind: valued, refuse: outsideFiles},
	"only-write-batch":    {kind: valued, refuse: outsideFiles},
	"read-batch":          {kind: valued, refuse: outsideFiles},
	"backup-dir":          {kind: valued, refuse: outsideFiles},
	"temp-dir":            {kind: valued, refuse: outsideFiles},
	"partial-dir":         {kind: valued, refuse: outsideFiles},
	"compare-dest":        {kind: valued, refuse: outsideFiles},
	"copy-dest":           {kind: valued, refuse: outsideFiles},
	"link-dest":           {kind: valued, refuse: outsideFiles},
	"copy-links":          {refuse: outsideFiles},
	"copy-unsafe-links":   {refuse: outsideFiles},
	"copy-dirlinks":       {refuse: outsideFiles},
	"insecure-links":      {refuse: weakens},
	"trust-sender":        {refuse: weakens},
	"old-args":            {refuse: weakens},
	"copy-devices":        {refuse: outsideFiles},
	"write-devices":       {refuse: outsideFiles},
	"copy-as":             {kind: valued, refuse: "it changes the user rsync runs as"},
	"remove-source-files": {refuse: deletes},
	"remove-sent-files":   {refuse: deletes},
	"del":                 {refuse: deletes},
	"delete":              {refuse: deletes},
	"delete-before":       {refuse: deletes},
	"delete-during":       {refuse: deletes},
	"delete-delay":        {refuse: deletes},
	"delete-after":        {refuse: deletes},
	"delete-excluded":     {refuse: deletes},
	"delete-missing-args": {refuse: deletes},
	"backup":              {refuse: layout},
	"suffix":              {kind: valued, refuse: layout},
	"relative":            {refuse: layout},
	"dry-run":             {refuse: incomplete},
	"list-only":           {refuse: incomplete},
	"existing":            {refuse: incomplete},
	"ignore-non-existing": {refuse: incomplete},
	"ignore-missing-args": {refuse: incomplete},
	"max-size":            {kind: valued, refuse: incomplete},
	"min-size":            {kind: valued, refuse: incomplete},
	"filter":              {kind: valued, refuse: incomplete},
	"exclude":             {kind: valued, refuse: incomplete},
	"include":             {kind: valued, refuse: incomplete},
	"cvs-exclude":         {refuse: incomplete},
	"help":                {refuse: incomplete},
	"version":             {refuse: incomplete},
}

// shortOpts maps short option letters to their rule.
var shortOpts = map[byte]optRule{
	'v': {}, 'q': {}, 'c': {}, 'a': {}, 'r': {}, 'u': {}, 'd': {}, 'l': {}, 'K': {},
	'H': {}, 'p': {}, 'E': {}, 'A': {}, 'X': {}, 'o': {}, 'g': {}, 'D': {}, 't': {},
	'U': {}, 'N': {}, 'O': {}, 'J': {}, 'S': {}, 'W': {}, 'x': {}, 'I': {}, 'y': {},
	'z': {}, '0': {}, 's': {}, '8': {}, 'h': {}, 'P': {}, 'i': {}, 'm': {}, '4': {},
	'6': {},
	'B': {kind: valued}, '@': {kind: valued},

	'e': {kind: valued, refuse: runsCommand},
	'M': {kind: valued, refuse: "it passes options to the remote rsync unchecked"},
	'T': {kind: valued, refuse: outsideFiles},
	'f': {kind: valued, refuse: incomplete},
	'F': {refuse: incomplete},
	'C': {refuse: incomplete},
	'L': {refuse: outsideFiles},
	'k': {refuse: outsideFiles},
	'b': {refuse: layout},
	'R': {refuse: layout},
	'n': {refuse: incomplete},
	'V': {refuse: incomplete},
}

// ParseArgs splits RSYNC_ARGS into rsync options and checks each of them.
//
// Splitting: words are separated by spaces; a word may be quoted with '…' or "…" (quotes are
// removed, their content taken literally; no escapes, no expansions). Control characters and the
// shell operators ; & | < > ( ) ` $ \ outside quotes are refused: the value is never given to a
// shell, and text that looks like shell is a mistake or an attack.
//
// Checking: every word must be an option (start with '-'), known to rsync and allowed (see
// longOpts/shortOpts); short options may be bundled (-aSz). An option that takes a value takes it
// from "=value" (long), the rest of the bundle (short) or the next word. "--" and file or host
// arguments are refused: the driver supplies the source and destination.
func ParseArgs(s string) ([]string, error) {
	words, err := splitWords(s)
	if err != nil {
		return nil, err
	}
	if err := checkOptions(words); err != nil {
		return nil, err
	}
	return words, nil
}

func splitWords(s string) ([]string, error) {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return nil, fmt.Errorf("invalid RSYNC_ARGS: control characters are not allowed")
		}
	}
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '\'' || ch == '"':
			end := strings.IndexByte(s[i+1:], ch)
			if end < 0 {
				return nil, fmt.Errorf("invalid RSYNC_ARGS %q: unterminated %c quote", s, ch)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case strings.IndexByte(";&|<>()`$\\", ch) >= 0:
			return nil, fmt.Errorf("invalid RSYNC_ARGS %q: %q is not allowed (RSYNC_ARGS is a list of rsync options, never run by a shell; quote values that need it)", s, ch)
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func checkOptions(words []string) error {
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "--":
			return fmt.Errorf("invalid RSYNC_ARGS: %q is not allowed (the driver gives the source and destination)", w)
		case strings.HasPrefix(w, "--"):
			name, value, hasValue := strings.Cut(w[2:], "=")
			rule, err := longRule(name)
			if err != nil {
				return err
			}
			if rule.kind == flag && hasValue {
				return fmt.Errorf("invalid RSYNC_ARGS: option --%s takes no value", name)
			}
			if rule.kind == valued {
				if !hasValue {
					if i+1 >= len(words) {
						return fmt.Errorf("invalid RSYNC_ARGS: option --%s needs a value", name)
					}
					i++
					value = words[i]
					if err := separateValue("--"+name, value); err != nil {
						return err
					}
				}
				if err := checkValue("--"+name, value); err != nil {
					return err
				}
			}
		case strings.HasPrefix(w, "-") && len(w) > 1:
			opt, value, consumedNext, err := checkShortBundle(w, i+1 < len(words))
			if err != nil {
				return err
			}
			if consumedNext {
				i++
				value = words[i]
				if err := separateValue(opt, value); err != nil {
					return err
				}
			}
			if opt != "" {
				if err := checkValue(opt, value); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("invalid RSYNC_ARGS: %q is not an option (every element must start with '-'; the driver gives the source and destination)", w)
		}
	}
	return nil
}

// longRule finds the rule of a long option; --no-X is allowed when X is an allowed flag.
func longRule(name string) (optRule, error) {
	rule, ok := longOpts[name]
	if !ok {
		if base, neg := strings.CutPrefix(name, "no-"); neg {
			r, ok := longOpts[base]
			if len(base) == 1 {
				r, ok = shortOpts[base[0]]
			}
			if ok && r.refuse == "" && r.kind == flag {
				return optRule{}, nil
			}
		}
		return rule, fmt.Errorf("invalid RSYNC_ARGS: option --%s is not allowed (unknown or not safe for backups)", name)
	}
	if rule.refuse != "" {
		return rule, fmt.Errorf("invalid RSYNC_ARGS: option --%s is not allowed: %s", name, rule.refuse)
	}
	return rule, nil
}

// checkShortBundle checks -abc. For a bundle ending in an option that takes a value it returns
// that option and its value, or consumedNext when the value is the next word.
func checkShortBundle(w string, hasNext bool) (opt, value string, consumedNext bool, err error) {
	for j := 1; j < len(w); j++ {
		ch := w[j]
		rule, ok := shortOpts[ch]
		if !ok {
			return "", "", false, fmt.Errorf("invalid RSYNC_ARGS: option -%c (in %q) is not allowed (unknown or not safe for backups)", ch, w)
		}
		if rule.refuse != "" {
			return "", "", false, fmt.Errorf("invalid RSYNC_ARGS: option -%c (in %q) is not allowed: %s", ch, w, rule.refuse)
		}
		if rule.kind == valued {
			opt = "-" + string(ch)
			if j+1 < len(w) {
				return opt, w[j+1:], false, nil // the rest of the word is the value
			}
			if !hasNext {
				return "", "", false, fmt.Errorf("invalid RSYNC_ARGS: option %s needs a value", opt)
			}
			return opt, "", true, nil
		}
	}
	return "", "", false, nil
}

// separateValue refuses a value given as the next word that looks like an option: rsync would
// take it as the value, but whoever wrote it most likely forgot the value.
func separateValue(opt, value string) error {
	if strings.HasPrefix(value, "-") {
		form := opt + "VALUE"
		if strings.HasPrefix(opt, "--") {
			form = opt + "=VALUE"
		}
		return fmt.Errorf("invalid RSYNC_ARGS: option %s needs a value, not %q (write %s for values starting with '-')", opt, value, form)
	}
	return nil
}

// valueRe is what option values may hold. rsync forwards many of them to the remote rsync
// through the remote shell; rsync >= 3.2.4 escapes them, older versions on a VM host would not.
var valueRe = regexp.MustCompile(`^[A-Za-z0-9._+,:=%@/-]+$`)

// checkValue checks an option's value; --out-format stays local (it formats rsync's own output)
// and may hold anything but control characters.
func checkValue(opt, value string) error {
	if opt == "--out-format" || opt == "--log-format" {
		return nil
	}
	if !valueRe.MatchString(value) {
		return fmt.Errorf("invalid RSYNC_ARGS: value %q of option %s: only letters, digits and . _ + , : = %% @ / - are allowed", value, opt)
	}
	return nil
}
