// Package cli is the command line: the driver actions oned runs (drivers/<backend>/<action>
// resolves to "<backend> <action>") and the same actions for an operator, with --xml, --dry-run
// and -v.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"onebackup/internal/agent"
	"onebackup/internal/backend"
	"onebackup/internal/one"
	"onebackup/internal/remote"
	"onebackup/internal/tm"
)

// Version is set at build time.
var Version = "dev"

// exitError carries a specific exit code to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

// Main runs the program and returns its exit code.
func Main(argv []string) int {
	args := driverArgs(argv)
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	code := one.ExitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintln(os.Stderr, one.FailureLine(err))
	return code
}

// driverArgs maps an invocation through drivers/<backend>/<action> (how oned runs a driver) to
// "<backend> <action> args…".
func driverArgs(argv []string) []string {
	action := filepath.Base(argv[0])
	if b, ok := strings.CutSuffix(action, "_downloader.rb"); ok { // <remotes>/datastore/<b>_downloader.rb
		return append([]string{b, "downloader"}, argv[1:]...)
	}
	backendName := filepath.Base(filepath.Dir(argv[0]))
	if _, ok := backends[backendName]; ok && action != "onebackup" {
		return append([]string{backendName, action}, argv[1:]...)
	}
	return argv[1:]
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "onebackup",
		Short:         "OpenNebula backup datastore drivers (restic, rsync)",
		Long:          "onebackup implements OpenNebula's restic and rsync backup datastore drivers.\noned runs it as <remotes>/datastore/<backend>/<action>; an operator can run the same\nactions as `onebackup <backend> <action>` with --xml, --dry-run and -v.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	for _, name := range []string{"restic", "rsync"} {
		root.AddCommand(backendCommand(name, backends[name]))
	}
	root.AddCommand(catFileCommand(), cleanTempCommand(), verifyCommand(), tm.Command())
	root.AddCommand(&cobra.Command{
		Use:    "agent",
		Short:  "Serve one request from the frontend (runs on hypervisors and repository hosts)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := agent.Main(os.Stdin, os.Stdout, os.Stderr); code != 0 {
				os.Exit(code) // the agent already reported on stderr
			}
			return nil
		},
	})
	return root
}

// options are the flags every action takes.
type options struct {
	xmlFile string
	dryRun  bool
	verbose bool
}

func (o *options) register(c *cobra.Command) {
	c.Flags().StringVarP(&o.xmlFile, "xml", "x", "", "read the action XML (raw or base64) from `FILE` instead of stdin")
	o.registerNoXML(c)
}

// registerNoXML registers the flags of commands that take no action XML.
func (o *options) registerNoXML(c *cobra.Command) {
	c.Flags().BoolVarP(&o.dryRun, "dry-run", "n", false, "print the plan (hosts, commands, paths) and run only read-only steps")
	c.Flags().BoolVarP(&o.verbose, "verbose", "v", false, "log every command run (DEBUG lines on stderr)")
}

// runtime builds the Runtime for an action and a context cancelled by SIGTERM or SIGINT.
func (o *options) runtime() (*backend.Runtime, context.Context, func()) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	rt := &backend.Runtime{
		Runner: &remote.Runner{},
		DryRun: o.dryRun,
		Plan:   os.Stdout,
		Log:    newLogger(os.Stderr, o.verbose),
	}
	done := stop
	if !o.dryRun && isTerminal(os.Stderr) {
		bar := &progressBar{w: os.Stderr}
		rt.Progress = bar.update
		done = func() { bar.finish(); stop() }
	}
	return rt, ctx, done
}

// message reads the action XML from --xml or stdin.
func (o *options) message() (*one.Message, error) {
	var r io.Reader = os.Stdin
	if o.xmlFile != "" {
		f, err := os.Open(o.xmlFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	} else if isTerminal(os.Stdin) {
		return nil, errors.New("no action XML: pipe it on stdin or pass --xml FILE")
	}
	return one.ReadMessage(r)
}
