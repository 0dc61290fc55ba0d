// Package tm is the frontend side of the system-datastore TM backup actions (prebackup,
// prebackup_live, postbackup, postbackup_live) of the drivers the matrix serves
// (matrix.TMDrivers).
// oned runs <remotes>/tm/<tm_mad>/<action> with the VMM's argv and the VM XML on stdin; this
// package starts "onebackup-host host backup|postbackup" on the VM host over ssh (through the
// far-side agent, so the process is tracked and stopped with the session) and relays its log.
// It is CGO-free: it never needs libvirt.
package tm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/hostwire"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/remote"
)

// Actions are the TM actions served here.
var Actions = []string{"prebackup", "prebackup_live", "postbackup", "postbackup_live"}

// Command is "onebackup tm <tm_mad> <action> host:vm_dir disks deploy_id bj_id vm_id sys_ds_id".
func Command() *cobra.Command {
	c := &cobra.Command{
		Use:                "tm <tm_mad> <action> host:vm_dir disk_ids deploy_id bj_id|- vm_id system_ds_id",
		Short:              "System-datastore TM backup actions (prebackup[_live], postbackup[_live]); VM XML on stdin",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return errors.New("usage: tm <tm_mad> <action> <6 TM arguments> < VM XML")
			}
			if code := Main(args[0], args[1], args[2:], os.Stdin, os.Stderr); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
	c.AddCommand(&cobra.Command{
		Use:   "drivers",
		Short: "List the system datastore TM drivers whose backup actions these drivers serve (make install links exactly these)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), strings.Join(matrix.TMDrivers(), " "))
			return nil
		},
	})
	return c
}

// DriverArgs maps an invocation as <dir>/tm/<tm_mad>/<action> to "tm <tm_mad> <action> args…";
// ok is false for any other path.
func DriverArgs(argv []string) ([]string, bool) {
	action := filepath.Base(argv[0])
	mad := filepath.Base(filepath.Dir(argv[0]))
	if filepath.Base(filepath.Dir(filepath.Dir(argv[0]))) != "tm" || !contains(matrix.TMDrivers(), mad) || !contains(Actions, action) {
		return nil, false
	}
	return append([]string{"tm", mad, action}, argv[1:]...), true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Main runs one TM action and returns its exit code.
func Main(tmMad, action string, args []string, stdin io.Reader, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	post := strings.HasPrefix(action, "postbackup")
	err := run(ctx, tmMad, action, args, stdin, stderr)
	if err == nil {
		return 0
	}
	if post {
		// As the reference: postbackup's result is not used by oned; leftovers are removed by
		// the next backup. Say what happened, succeed.
		fmt.Fprintf(stderr, "WARNING: %s: %s (leftovers will be removed by the next backup)\n", action, one.FailureLine(err))
		return 0
	}
	fmt.Fprintf(stderr, "ERROR: %s\n", one.FailureLine(err))
	return one.ExitFailure
}

func run(ctx context.Context, tmMad, action string, args []string, stdin io.Reader, stderr io.Writer) error {
	if !contains(matrix.TMDrivers(), tmMad) {
		return fmt.Errorf("TM driver %q: host-side backups are served for %v only", tmMad, matrix.TMDrivers())
	}
	if !contains(Actions, action) {
		return fmt.Errorf("unknown TM backup action %q", action)
	}
	if len(args) == 6 && args[1] == "" || len(args) == 6 && strings.Trim(args[1], ":") == "" {
		return errors.New("no disks to back up (empty disk list in the TM command)")
	}
	a, err := one.ParseBackupArgs(args)
	if err != nil {
		return err
	}
	xml, err := io.ReadAll(io.LimitReader(stdin, 64<<20))
	if err != nil || len(strings.TrimSpace(string(xml))) == 0 {
		return errors.New("no VM XML on stdin")
	}
	conf, err := one.LoadConf(one.DatastoreConfPath())
	if err != nil {
		return fmt.Errorf("cannot read %s: %v", one.DatastoreConfPath(), err)
	}
	staging, err := one.StagingDir(conf, a.VMDir, a.VMID)
	if err != nil {
		return err
	}
	sub := "backup"
	if strings.HasPrefix(action, "postbackup") {
		sub = "postbackup"
	}
	mode := "--poweroff"
	if strings.HasSuffix(action, "_live") {
		mode = "--live"
	}
	argv := []string{hostwire.HostBinary(), "host", sub, "--disks", args[1], "--vm-dir", a.VMDir, "--deploy-id", a.DeployID,
		"--backup-dir", staging, "--tm-mad", tmMad, mode}
	if sub == "backup" {
		argv = confine(ctx, xml, argv, a.VMDir, stderr)
	}
	env := hostwire.TestEnv()
	env[hostwire.VMXMLEnv] = hostwire.EncodeVMXML(xml)
	buf := make([]byte, 4)
	rand.Read(buf)
	token := fmt.Sprintf("tm-%s-%d-%s", sub, a.VMID, hex.EncodeToString(buf))
	runner := &remote.Runner{}
	res, err := runner.Run(ctx, remote.Cmd{
		Target: remote.Target{Host: a.Host},
		Argv:   argv,
		Env:    env,
		Token:  token,
		// Stopped, the host side rolls the VM back onto its original chain (abort the
		// job, commit an overlay): give it time before SIGKILL.
		StopGrace: hostStopGrace,
	})
	if res != nil && len(res.Stderr) > 0 {
		stderr.Write(res.Stderr)
	}
	if ctx.Err() != nil {
		what := "Prebackup"
		if strings.HasSuffix(action, "_live") {
			what = "Live prebackup"
		}
		if sub == "postbackup" {
			what = "Postbackup"
		}
		return fmt.Errorf("%s cancelled: %s", what, staging)
	}
	return err
}

// hostStopGrace is how long a stopped host-side backup may take to restore the VM's disk chain.
const hostStopGrace = 5 * time.Minute

// confine wraps the host command with the backup datastore's limits (<MAD>_NICE, <MAD>_IONICE,
// or the systemd slice attributes, spec §3.6), loading the datastore LAST_DATASTORE_ID from
// oned. When oned cannot be asked, the backup runs unconfined and the log says so.
func confine(ctx context.Context, vmXML []byte, argv []string, vmDir string, log io.Writer) []string {
	msg, err := one.ParseMessage(vmXML)
	if err != nil {
		return argv
	}
	idText := msg.Text("BACKUPS/BACKUP_CONFIG/LAST_DATASTORE_ID")
	if idText == "" {
		return argv
	}
	id, err := strconv.Atoi(idText)
	if err != nil || id < 0 {
		return argv
	}
	c, err := oned.New()
	var ds *one.Datastore
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ds, err = c.DatastoreInfo(cctx, id)
		cancel()
	}
	if err != nil {
		fmt.Fprintf(log, "WARNING: cannot load backup datastore %d for the command limits (running unconfined): %s\n", id, one.FailureLine(err))
		return argv
	}
	conf, err := backend.ParseConfinement(ds, strings.ToUpper(ds.DSMad()), id)
	if err != nil {
		fmt.Fprintf(log, "WARNING: backup datastore %d: %s (running unconfined)\n", id, one.FailureLine(err))
		return argv
	}
	return conf.Wrap(argv, vmDir, []string{hostwire.VMXMLEnv})
}
