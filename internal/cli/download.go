package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/remote"
	"onebackup/internal/validate"
)

// downloaderCommand is <remotes>/datastore/<backend>_downloader.rb: it prepares a backup URL and
// prints the command= / clean_command= lines downloader.sh evaluates.
func downloaderCommand(open backend.Opener) *cobra.Command {
	return urlCommand(open, "downloader URL", "Prepare a backup URL for downloader.sh (prints command= and clean_command=)", false,
		func(ctx context.Context, rt *backend.Runtime, d backend.Downloader, u chain.URL, loc backend.Location) error {
			dl, err := d.PrepareDownload(ctx, u, loc)
			if err != nil || rt.DryRun {
				return err
			}
			lines, err := backend.DownloaderLines(dl)
			if err != nil {
				return err
			}
			_, err = io.WriteString(os.Stdout, lines)
			return err
		})
}

// streamCommand writes the file a single-restore-point URL names to stdout.
func streamCommand(open backend.Opener) *cobra.Command {
	return urlCommand(open, "stream URL", "Write the file a backup URL names to stdout", true,
		func(ctx context.Context, rt *backend.Runtime, d backend.Downloader, u chain.URL, loc backend.Location) error {
			// downloader.sh reads the first KiB of the stream, then closes it: that is an error
			// to handle, not a reason to die on the spot, for the restic feeding the stream
			// must be stopped cleanly (remote.Runner sends it SIGTERM; killed by SIGPIPE, it
			// would leave its repository lock).
			signal.Ignore(syscall.SIGPIPE)
			return d.Stream(ctx, u, loc, os.Stdout)
		})
}

// urlCommand is an action on one backup URL, resolved strictly against its datastore first.
func urlCommand(open backend.Opener, use, short string, hidden bool,
	run func(context.Context, *backend.Runtime, backend.Downloader, chain.URL, backend.Location) error) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use: use, Short: short, Hidden: hidden, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rt, ctx, done := o.runtime()
			defer done()
			d, u, loc, err := backend.ResolveURL(ctx, rt, open, lookupDatastore, args[0])
			if err != nil {
				return err
			}
			return run(ctx, rt, d, u, loc)
		},
	}
	o.registerNoXML(c)
	return c
}

// Paths cat-file may read: files in this program's temporary directories, or stored rsync
// backup files (<base>/<vm_id>/<backup_id>/disk.*).
var rsyncStoredRe = regexp.MustCompile(`^/([A-Za-z0-9._+-]+/)*[0-9]+/[0-9]+/[A-Za-z0-9_-]+/disk\.[0-9a-z]+\.[A-Za-z0-9.]+$`)

func checkServedPath(p string) error {
	clean, err := validate.AbsPath("file", p)
	if err != nil {
		return err
	}
	if clean != p {
		return fmt.Errorf("path %q is not clean", p)
	}
	if backend.CheckTempDir(filepath.Dir(p)) == nil || rsyncStoredRe.MatchString(p) {
		return nil
	}
	return fmt.Errorf("%q is neither a prepared download nor a stored backup file", p)
}

// target parses --host user@host ("" is the frontend).
func target(s string) (remote.Target, error) {
	if s == "" {
		return remote.Local, nil
	}
	user, host, ok := strings.Cut(s, "@")
	if !ok {
		return remote.Target{}, fmt.Errorf("--host takes user@host")
	}
	if err := validate.User("user", user); err != nil {
		return remote.Target{}, err
	}
	if err := validate.Host("host", host); err != nil {
		return remote.Target{}, err
	}
	return remote.Target{Host: host, User: user}, nil
}

// catFileCommand streams a prepared or stored file, locally or from a repository host.
func catFileCommand() *cobra.Command {
	return fileCommand("cat-file [--host USER@HOST] PATH", "Write a prepared download to stdout",
		checkServedPath, func(p string) []string { return []string{"cat", "--", p} })
}

// cleanTempCommand removes a temporary directory of a download.
func cleanTempCommand() *cobra.Command {
	return fileCommand("clean-temp [--host USER@HOST] DIR", "Remove the temporary directory of a download",
		backend.CheckTempDir, func(p string) []string { return []string{"rm", "-rf", "--", p} })
}

// fileCommand runs one fixed command on a checked path, locally or on --host over ssh: the
// commands downloader.sh evaluates.
func fileCommand(use, short string, check func(string) error, argv func(string) []string) *cobra.Command {
	var o options
	var host string
	c := &cobra.Command{
		Use: use, Short: short, Hidden: true, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := check(args[0]); err != nil {
				return err
			}
			t, err := target(host)
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			_, err = rt.Runner.Run(ctx, remote.Cmd{Target: t, Argv: argv(args[0]), Stdout: os.Stdout})
			return err
		},
	}
	c.Flags().StringVar(&host, "host", "", "run on `USER@HOST` over ssh")
	o.registerNoXML(c)
	return c
}

// lookupDatastore reads a datastore from oned (one.datastore.info, decrypted) with the
// driver's credentials (ONE_AUTH, ~/.one/one_auth).
func lookupDatastore(ctx context.Context, id int) (*one.Datastore, error) {
	c, err := oned.New()
	if err != nil {
		return nil, err
	}
	return c.DatastoreInfo(ctx, id)
}
