package backend

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"onebackup/internal/chain"
	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// DatastoreLookup fetches a datastore by id from oned (one.datastore.info, decrypted), for the
// actions that receive only a URL.
type DatastoreLookup func(ctx context.Context, id int) (*one.Datastore, error)

// Download is what downloader.sh evaluates: a command printing the image and one removing what
// the preparation left (nil when nothing).
type Download struct {
	Command []string
	Clean   []string
}

// Downloader is a Store that can serve backup URLs.
type Downloader interface {
	// PrepareDownload checks that u names a disk of a backup of loc and readies its stream.
	PrepareDownload(ctx context.Context, u chain.URL, loc Location) (*Download, error)
	// Stream writes the file u names (a single restore point or vTPM state) to w.
	Stream(ctx context.Context, u chain.URL, loc Location, w *os.File) error
}

// ResolveURL parses a backup URL strictly and opens the datastore it names.
func ResolveURL(ctx context.Context, rt *Runtime, open Opener, lookup DatastoreLookup, raw string) (Downloader, chain.URL, Location, error) {
	u, err := chain.ParseURL(raw)
	if err != nil {
		return nil, u, Location{}, err
	}
	ds, err := lookup(ctx, u.DSID)
	if err != nil {
		return nil, u, Location{}, fmt.Errorf("cannot read datastore %d from oned: %w", u.DSID, err)
	}
	if id, err := ds.ID(); err != nil || id != u.DSID {
		return nil, u, Location{}, fmt.Errorf("oned returned another datastore than %d", u.DSID)
	}
	if mad := ds.DSMad(); mad != u.Backend {
		return nil, u, Location{}, fmt.Errorf("datastore %d is a %q datastore, not %s", u.DSID, mad, u.Backend)
	}
	store, err := open(ds, rt)
	if err != nil {
		return nil, u, Location{}, err
	}
	d, ok := store.(Downloader)
	if !ok {
		return nil, u, Location{}, fmt.Errorf("the %s backend cannot serve backup URLs", u.Backend)
	}
	loc := Location{JobID: u.JobID}
	if loc.VMID, err = u.VMID(); err != nil {
		return nil, u, Location{}, err
	}
	return d, u, loc, nil
}

// DownloaderLines renders a Download as the two lines downloader.sh evaluates. Every argument is
// single-quoted by remote.Quote and checked to hold nothing a double-quoted shell string would
// interpret.
func DownloaderLines(d *Download) (string, error) {
	cmd, err := quoteForEval(d.Command)
	if err != nil {
		return "", err
	}
	clean := ""
	if len(d.Clean) > 0 {
		if clean, err = quoteForEval(d.Clean); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("command=\"%s\"\nclean_command=\"%s\"\n", cmd, clean), nil
}

var evalSafeRe = regexp.MustCompile(`^[A-Za-z0-9._/:,+@=-]*$`)

func quoteForEval(argv []string) (string, error) {
	for _, a := range argv {
		if !evalSafeRe.MatchString(a) {
			return "", fmt.Errorf("refusing to print a downloader command with argument %q", a)
		}
	}
	return remote.Quote(argv)
}

// SelfPath is this program's real path, for the commands printed to downloader.sh.
func SelfPath() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(p)
}

// TempPrefix starts the name of every temporary directory a download or flatten creates.
const TempPrefix = "onebackup-tmp-"

var tempDirRe = regexp.MustCompile(`^/.*/` + TempPrefix + `[0-9a-f]{16}$`)

// CheckTempDir accepts only directories this program creates for downloads.
func CheckTempDir(dir string) error {
	if !tempDirRe.MatchString(dir) || strings.Contains(dir, "/../") {
		return fmt.Errorf("%q is not a temporary directory of onebackup", dir)
	}
	return nil
}

// NewTempName is a fresh temporary directory path under parent.
func NewTempName(parent string) string {
	return filepath.Join(parent, TempPrefix+randomHex(8))
}
