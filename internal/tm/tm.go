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
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/hostwire"
	"onebackup/internal/matrix"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/remote"
	"onebackup/internal/validate"
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
	var restore bool
	drivers := &cobra.Command{
		Use:   "drivers",
		Short: "List the system datastore TM drivers whose backup actions (with --restore: whose in-place restore) these drivers serve; make install links exactly these",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			list := matrix.TMDrivers()
			if restore {
				list = matrix.RestoreDrivers()
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.Join(list, " "))
			return nil
		},
	}
	drivers.Flags().BoolVar(&restore, "restore", false, "list the drivers whose restore action is served")
	c.AddCommand(drivers)
	return c
}

// DriverArgs maps an invocation as <dir>/tm/<tm_mad>/<action> to "tm <tm_mad> <action> args…";
// ok is false for any other path.
func DriverArgs(argv []string) ([]string, bool) {
	action := filepath.Base(argv[0])
	mad := filepath.Base(filepath.Dir(argv[0]))
	if filepath.Base(filepath.Dir(filepath.Dir(argv[0]))) != "tm" {
		return nil, false
	}
	if !(contains(matrix.TMDrivers(), mad) && contains(Actions, action)) && !(contains(matrix.RestoreDrivers(), mad) && action == "restore") {
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
	if action == "restore" {
		return restoreInPlace(ctx, tmMad, args, stderr)
	}
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
	vm := vmOf(xml)
	if sub == "backup" {
		f, err := chainFormat(ctx, tmMad, vm)
		if err != nil {
			return err
		}
		if f != "" {
			argv = append(argv, "--chain-format", f)
		}
	}
	load := loadBackupDS(ctx, xml)
	if on := optIns(tmMad, load, stderr); len(on) > 0 {
		argv = append(argv, "--opt-in", strings.Join(on, ","))
	}
	env := hostwire.TestEnv()
	env[hostwire.VMXMLEnv] = hostwire.EncodeVMXML(xml)
	h := hostRun{action: action, sub: sub, staging: staging, vmID: a.VMID, stderr: stderr}
	bridge, err := exportBridge(tmMad, a.Host, vm)
	if err != nil {
		return err
	}
	wrap := func(argv []string) []string {
		if sub == "backup" {
			return confine(load, argv, a.VMDir, stderr)
		}
		return argv
	}
	if bridge == "" {
		_, err := h.run(ctx, a.Host, wrap(argv), env)
		return err
	}
	// The backup datastore's bridge exports (and the datastore uploads from there); the VM's
	// host does what needs the VM: leftovers of a crashed run, the quiesced snapshot, the vTPM
	// state, which the bridge then stages (W-15, W-16).
	phase := func(p string) []string { return append(append([]string(nil), argv...), "--phase", p) }
	if sub == "postbackup" {
		_, err1 := h.run(ctx, a.Host, argv, env)
		_, err2 := h.run(ctx, bridge, phase(hostwire.PhaseExport), env)
		return errors.Join(err1, err2)
	}
	res, err := h.run(ctx, a.Host, wrap(phase(hostwire.PhasePoint)), env)
	if err != nil {
		return err
	}
	if tpm := strings.TrimSpace(string(res.Stdout)); tpm != "" {
		env[hostwire.TPMEnv] = tpm
	}
	_, err = h.run(ctx, bridge, wrap(phase(hostwire.PhaseExport)), env)
	return err
}

// vmOf reads the VM XML for the decisions made here; nil when it does not parse (the host side
// then reports the error in its own words).
func vmOf(xml []byte) *one.VM {
	msg, err := one.ParseMessage(xml)
	if err != nil {
		return nil
	}
	vm, err := msg.VM()
	if err != nil {
		return nil
	}
	return vm
}

// exportBridge is the host that exports a Ceph VM's disks: LAST_BRIDGE, the bridge oned chose
// from the backup datastore's BRIDGE_LIST, where the datastore's backup action also uploads
// from. "" when the VM's host does all (other storages: their disks are only on that host).
func exportBridge(tmMad, vmHost string, vm *one.VM) (string, error) {
	if tmMad != "ceph" || vm == nil {
		return "", nil
	}
	bridge := vm.LastBridge()
	if bridge == "" || bridge == vmHost {
		return "", nil
	}
	if err := validate.Host("LAST_BRIDGE", bridge); err != nil {
		return "", err
	}
	return bridge, nil
}

// hostRun starts the host side of one TM action on a host and relays its log.
type hostRun struct {
	action, sub, staging string
	vmID                 int
	stderr               io.Writer
}

func (h hostRun) run(ctx context.Context, host string, argv []string, env map[string]string) (*remote.Result, error) {
	buf := make([]byte, 4)
	rand.Read(buf)
	token := fmt.Sprintf("tm-%s-%d-%s", h.sub, h.vmID, hex.EncodeToString(buf))
	runner := &remote.Runner{}
	res, err := runner.Run(ctx, remote.Cmd{
		Target: remote.Target{Host: host},
		Argv:   argv,
		Env:    env,
		Token:  token,
		// Stopped, the host side rolls the VM back onto its original chain (abort the
		// job, commit an overlay): give it time before SIGKILL.
		StopGrace: hostStopGrace,
	})
	if res != nil && len(res.Stderr) > 0 {
		h.stderr.Write(res.Stderr)
	}
	if ctx.Err() != nil {
		what := "Prebackup"
		if strings.HasSuffix(h.action, "_live") {
			what = "Live prebackup"
		}
		if h.sub == "postbackup" {
			what = "Postbackup"
		}
		return res, fmt.Errorf("%s cancelled: %s", what, h.staging)
	}
	return res, err
}

// chainFormat is the FORMAT of the image an increment of a Ceph VM continues: a chain
// OpenNebula ≤ 7.0 started in rbd format (.rbd2 + .rbdiff) must go on in that format. It is
// the chain's own image (INCREMENTAL_BACKUP_ID) that decides, not the oldest backup image of
// the VM, which may belong to an older chain (W-14). "" when there is nothing to continue.
func chainFormat(ctx context.Context, tmMad string, vm *one.VM) (string, error) {
	if tmMad != "ceph" || vm == nil {
		return "", nil
	}
	cfg, err := vm.BackupConfig()
	if err != nil || !cfg.Incremental() || cfg.LastIncrementID < 0 {
		return "", nil
	}
	id := vm.IncrementalBackupID()
	if id < 0 {
		return "", nil
	}
	c, err := oned.New()
	var img *one.Image
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		img, err = c.ImageInfo(cctx, id)
		cancel()
	}
	if err != nil {
		return "", fmt.Errorf("cannot load backup image %d to tell the format of the chain increment %d continues: %w", id, cfg.LastIncrementID+1, err)
	}
	return img.Format(), nil
}

// hostStopGrace is how long a stopped host-side backup may take to restore the VM's disk chain.
const hostStopGrace = 5 * time.Minute

// backupDS is the backup datastore of the VM's backup (LAST_DATASTORE_ID), loaded from oned
// once per action and only when needed; id -1 when the VM names none.
type backupDS func() (ds *one.Datastore, id int, err error)

func loadBackupDS(ctx context.Context, vmXML []byte) backupDS {
	var once sync.Once
	var ds *one.Datastore
	id := -1
	var err error
	return func() (*one.Datastore, int, error) {
		once.Do(func() {
			msg, perr := one.ParseMessage(vmXML)
			if perr != nil {
				return
			}
			n, perr := strconv.Atoi(msg.Text("BACKUPS/BACKUP_CONFIG/LAST_DATASTORE_ID"))
			if perr != nil || n < 0 {
				return
			}
			id = n
			var c *oned.Client
			if c, err = oned.New(); err == nil {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				ds, err = c.DatastoreInfo(cctx, id)
				cancel()
			}
		})
		return ds, id, err
	}
}

// confine wraps the host command with the backup datastore's limits (<MAD>_NICE, <MAD>_IONICE,
// or the systemd slice attributes, spec §3.6). When oned cannot be asked, the backup runs
// unconfined and the log says so.
func confine(load backupDS, argv []string, vmDir string, log io.Writer) []string {
	ds, id, err := load()
	if id < 0 {
		return argv
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

// optIns lists the backup datastore's attributes that enable opt-in cells of the matrix for
// this driver's disks (LVM_THIN_INCREMENTS=YES), for the host side's matrix check. Without
// them the host refuses such a backup with the message naming the attribute.
func optIns(tmMad string, load backupDS, log io.Writer) []string {
	attrs := matrix.OptInAttributes(tmMad)
	if len(attrs) == 0 {
		return nil
	}
	ds, id, err := load()
	if id < 0 {
		return nil
	}
	if err != nil {
		fmt.Fprintf(log, "WARNING: cannot load backup datastore %d to read %s: %s\n", id, strings.Join(attrs, ", "), one.FailureLine(err))
		return nil
	}
	var on []string
	for _, a := range attrs {
		if strings.EqualFold(strings.TrimSpace(ds.Attr(a)), "yes") {
			on = append(on, a)
		}
	}
	return on
}
