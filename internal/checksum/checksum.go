// Package checksum records what a backup holds so that a later read can tell a damaged backup
// from a good one. Each backup carries a file named "sha256sums", in the format of coreutils'
// sha256sum ("<hex>  <name>" lines), with the SHA-256 of every other file of the backup: the disk
// images as stored, vm.xml and the vTPM state. It is written on the host when the backup is
// staged, travels with the other files, and every read of a stored file (downloads, restores,
// flatten) compares the bytes it receives with it. On an rsync datastore an operator can check a
// backup directory by hand with `sha256sum -c sha256sums`.
//
// Backups made before the file existed (or by OpenNebula's own drivers) have no record; their
// reads are not checked, and a verify run reports them as unverified rather than good.
package checksum

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// File is the name of the record inside a backup. It does not start with "disk." so that
// OpenNebula's restore, which takes every file named disk.* for a disk, leaves it alone.
const File = "sha256sums"

// Sums maps the base name of each file of a backup to its SHA-256 (lowercase hex).
type Sums map[string]string

// maxRecord bounds the record read from a backup: a few lines per disk.
const maxRecord = 1 << 20

var (
	lineRe = regexp.MustCompile(`^([0-9a-f]{64}) [ *](` + namePattern + `)$`)
	nameRe = regexp.MustCompile(`^` + namePattern + `$`)
)

// namePattern is what a file of a backup may be called in a record.
const namePattern = `[A-Za-z0-9._-]+`

// Parse reads a record. Anything but well-formed lines naming plain base names is refused, so
// that a damaged record is reported instead of half used.
func Parse(data []byte) (Sums, error) {
	if len(data) > maxRecord {
		return nil, fmt.Errorf("%s is %d bytes, more than a checksum record can be", File, len(data))
	}
	s := Sums{}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		m := lineRe.FindStringSubmatch(line)
		if m == nil || m[2] == "." || m[2] == ".." || m[2] == File {
			return nil, fmt.Errorf("%s line %d is not \"<sha256>  <file name>\"", File, i+1)
		}
		if _, dup := s[m[2]]; dup {
			return nil, fmt.Errorf("%s names %s twice", File, m[2])
		}
		s[m[2]] = m[1]
	}
	return s, nil
}

// ReadRecord reads the record file of backup through read (which writes the file's bytes) and
// parses it. Only the first bytes are kept, so an oversized file is refused, not read whole. An
// error of read is returned as it is; a record that does not parse is a corrupt backup.
func ReadRecord(backup, file string, read func(io.Writer) error) (Sums, error) {
	lw := &limited{n: maxRecord + 1}
	if err := read(lw); err != nil {
		return nil, err
	}
	sums, err := Parse(lw.buf.Bytes())
	if err != nil {
		return nil, &CorruptError{Backup: backup, File: file, Detail: "(the checksum record) is damaged: " + err.Error()}
	}
	return sums, nil
}

// limited keeps the first n bytes written to it and drops the rest.
type limited struct {
	buf bytes.Buffer
	n   int
}

func (l *limited) Write(p []byte) (int, error) {
	if k := min(len(p), l.n); k > 0 {
		l.buf.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// Format renders s as sha256sum does, sorted by name.
func (s Sums) Format() []byte {
	names := make([]string, 0, len(s))
	for n := range s {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		fmt.Fprintf(&b, "%s  %s\n", s[n], n)
	}
	return b.Bytes()
}

// SumFile returns the SHA-256 of a file.
func SumFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("cannot read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// WriteDir records every regular file of dir (a staged backup) in dir/sha256sums, replacing an
// older record. The record is written to a temporary name and renamed, so that a kill leaves
// either no record or a whole one.
func WriteDir(dir string) (Sums, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	s := Sums{}
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == File || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if !nameRe.MatchString(e.Name()) {
			return nil, fmt.Errorf("cannot record %s: its name is not one a backup holds", filepath.Join(dir, e.Name()))
		}
		if s[e.Name()], err = SumFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
	}
	tmp := filepath.Join(dir, "."+File+".tmp")
	if err := os.WriteFile(tmp, s.Format(), 0o644); err != nil {
		os.Remove(tmp)
		return nil, err
	}
	return s, os.Rename(tmp, filepath.Join(dir, File))
}

// CorruptError says that a stored file of a backup is not what was backed up.
type CorruptError struct {
	Backup string // the backup (restic snapshot or rsync directory id)
	File   string // the stored file's path
	Detail string // what was found
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("backup %s is corrupt: %s %s", e.Backup, e.File, e.Detail)
}

func (e *CorruptError) corrupt() {}

// DamagedError says that a repository's own check found damaged data.
type DamagedError struct {
	Repository string
	Detail     string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("repository %s is damaged: %s", e.Repository, e.Detail)
}

func (e *DamagedError) corrupt() {}

// IsCorrupt tells whether err reports corrupt backup data (a file or a repository).
func IsCorrupt(err error) bool {
	var c interface{ corrupt() }
	return errors.As(err, &c)
}

// Checker hashes the bytes of one stored file as they pass and compares them with the record.
type Checker struct {
	backup, file, want string
	h                  hash.Hash
	w                  io.Writer
}

// NewChecker passes what is written to it on to w and checks it against the record of file's
// base name; with no record for it (an older backup), bytes only pass through.
func (s Sums) NewChecker(backup, file string, w io.Writer) *Checker {
	c := &Checker{backup: backup, file: file, w: w, want: s[filepath.Base(file)]}
	if c.want != "" {
		c.h = sha256.New()
	}
	return c
}

// Recorded tells whether the file has a recorded checksum.
func (c *Checker) Recorded() bool { return c.h != nil }

func (c *Checker) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	return n, err
}

// Check compares what went through with the record, once the whole file was written.
func (c *Checker) Check() error {
	if c.h == nil {
		return nil
	}
	if got := hex.EncodeToString(c.h.Sum(nil)); got != c.want {
		return &CorruptError{Backup: c.backup, File: c.file,
			Detail: fmt.Sprintf("does not match the checksum recorded when it was backed up (SHA-256 %s, recorded %s)", got[:16]+"…", c.want[:16]+"…")}
	}
	return nil
}
