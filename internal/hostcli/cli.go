// Package hostcli is the host side of the TM backup actions: "onebackup-host host backup" and
// "host postbackup" run on the hypervisor (started over ssh by the frontend's TM action, or by
// hand), resolve the request against the matrix and drive the storage adapter.
package hostcli

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"onebackup/internal/checksum"
	"onebackup/internal/hostjob"
	"onebackup/internal/hostwire"
	"onebackup/internal/hypervisor"
	"onebackup/internal/lockfile"
	"onebackup/internal/matrix"
	"onebackup/internal/storage"
)

// Version is set at build time.
var Version = "dev"

type logger struct{ w io.Writer }

func (l logger) Infof(f string, a ...any) { fmt.Fprintf(l.w, "INFO: "+f+"\n", a...) }
func (l logger) Warnf(f string, a ...any) { fmt.Fprintf(l.w, "WARNING: "+f+"\n", a...) }

// Main runs the host binary.
func Main(argv []string) int {
	// When the frontend goes away (its TM action was cancelled), the pipe carrying our log
	// closes while we still roll the VM back. A log line written then must fail, not kill the
	// process half-way through its cleanup (Go exits on a broken pipe on stderr unless SIGPIPE
	// is handled). Handled here, it stays at its default in the tools we start.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	root := &cobra.Command{
		Use:           "onebackup-host",
		Short:         "Host side of OpenNebula VM backups (runs on hypervisors)",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
	}
	host := &cobra.Command{Use: "host", Short: "Backup work on this hypervisor"}
	root.AddCommand(host)
	host.AddCommand(command("backup", "Stage the selected disks of a VM for the datastore backup action (TM prebackup[_live])", runBackup))
	host.AddCommand(restoreCommands()...)
	host.AddCommand(command("postbackup", "Finish a backup: chain anchors, cleanup (TM postbackup[_live])", runPostbackup))
	root.SetArgs(argv[1:])
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	return 0
}

func command(name, short string, fn func(context.Context, *options) error) *cobra.Command {
	o := &options{}
	c := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer stop()
			if err := confine(o.nice, o.ionice); err != nil {
				return err
			}
			return fn(ctx, o)
		},
	}
	f := c.Flags()
	f.StringVar(&o.vmXMLFile, "vm-xml", "", "VM XML `FILE` (raw or base64; - = stdin); default $"+hostwire.VMXMLEnv+" or stdin")
	f.StringVar(&o.disks, "disks", "", "disk ids to back up, colon separated (argv $2 of the TM action)")
	f.StringVar(&o.vmDir, "vm-dir", "", "VM directory on this host (default /var/lib/one/datastores/<DS_ID>/<VM ID>)")
	f.StringVar(&o.deployID, "deploy-id", "", "libvirt domain UUID or name (default VM/DEPLOY_ID)")
	f.StringVar(&o.backupDir, "backup-dir", "", "staging directory (default <VM dir>/backup; <BACKUP_BASE_PATH>/<vid>/backup)")
	f.StringVar(&o.tmMad, "tm-mad", "", "system datastore TM_MAD (default HISTORY/TM_MAD)")
	f.StringVar(&o.phase, "phase", "", "run one phase of a backup whose export runs on a bridge host: point (on the VM's host) or export (on the bridge)")
	f.StringSliceVar(&o.optIns, "opt-in", nil, "backup datastore attributes set to YES that enable opt-in matrix cells ("+matrix.LVMThinIncrements+")")
	f.StringVar(&o.chainFmt, "chain-format", "", "FORMAT of the image of the chain being continued (rbd: a legacy Ceph chain, continued with .rbdiff files)")
	f.BoolVar(&o.live, "live", false, "live backup (default: from LCM_STATE 69)")
	f.BoolVar(&o.poweroff, "poweroff", false, "power-off backup (default: from LCM_STATE)")
	f.BoolVar(&o.failure, "failure", false, "postbackup after a failed backup (as BACKUP_RESULT=FAILURE)")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "resolve and print the plan; change nothing")
	f.IntVar(&o.nice, "nice", -100, "run with this nice value")
	f.IntVar(&o.ionice, "ionice", -1, "run in I/O class best-effort with this level (0-7)")
	c.MarkFlagRequired("disks")
	return c
}

// confine lowers this process's (and its children's) CPU and I/O priority.
func confine(nice, ionice int) error {
	if nice != -100 {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, 0, nice); err != nil {
			return fmt.Errorf("cannot set nice %d: %v", nice, err)
		}
	}
	if ionice >= 0 {
		const ioprioClassBE, ioprioWhoProcess = 2, 1
		prio := ioprioClassBE<<13 | (ionice & 7)
		if _, _, e := syscall.Syscall(syscall.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uintptr(prio)); e != 0 {
			return fmt.Errorf("cannot set ionice %d: %v", ionice, e)
		}
	}
	return nil
}

// lockVM serialises the runs for one VM (a cancelled prebackup still cleaning up and the
// failure postbackup that follows it).
func lockVM(ctx context.Context, vmDir string) (func(), error) {
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(vmDir, ".backup.lock")
	release, err := lockfile.Acquire(ctx, path, 5*time.Minute)
	if errors.Is(err, lockfile.ErrTimeout) {
		return nil, fmt.Errorf("another backup run of this VM holds %s", path)
	}
	return release, err
}

// row is the code of a matrix row: its hypervisor side and its storage side, composed.
type row struct {
	hv hypervisor.Hypervisor
	st storage.Storage
}

func prepare(ctx context.Context, o *options) (*hostjob.Job, *vmDoc, row, error) {
	log := logger{os.Stderr}
	doc, err := o.readVMXML()
	if err != nil {
		return nil, nil, row{}, err
	}
	j, err := o.buildJob(ctx, doc, log)
	if err != nil {
		return nil, doc, row{}, err
	}
	var r row
	if r.hv, err = hypervisor.Get(j.Decision.Row.Hypervisor); err == nil {
		r.st, err = storage.Get(j.Decision.Row.Storage.Side())
	}
	if err != nil {
		return j, doc, r, fmt.Errorf("%s: %w", j.Decision.Row.Name(), err)
	}
	switch o.phase {
	case "":
	case hostwire.PhasePoint, hostwire.PhaseExport:
		if _, ok := r.st.(storage.Bridged); !ok {
			return j, doc, r, fmt.Errorf("%s: the %s storage side exports only on the VM's host", j.Decision.Row.Name(), r.st.Side())
		}
		if o.phase == hostwire.PhaseExport {
			r.hv = elsewhere{r.hv.Name()}
		}
	default:
		return j, doc, r, fmt.Errorf("unknown phase %q (point or export)", o.phase)
	}
	return j, doc, r, nil
}

// elsewhere is the hypervisor side on a bridge host, where the VM does not run: its own host
// does the hypervisor work (leftovers, quiesce) in the point phase and in its postbackup.
type elsewhere struct{ name matrix.Hypervisor }

func (e elsewhere) Name() matrix.Hypervisor                              { return e.name }
func (elsewhere) Recover(ctx context.Context, j *hostjob.Job) error      { return nil }
func (elsewhere) CheckStopped(ctx context.Context, j *hostjob.Job) error { return nil }
func (elsewhere) Quiesce(ctx context.Context, j *hostjob.Job) (func() error, error) {
	return nil, fmt.Errorf("VM %d cannot be quiesced from a bridge host", j.VMID)
}

func runBackup(ctx context.Context, o *options) error {
	j, doc, r, err := prepare(ctx, o)
	if err != nil {
		return err
	}
	if j.DryRun {
		fmt.Printf("VM %d: %s %s backup (hypervisor side %s, storage side %s), increment %d (parent %d), mode %s, FS_FREEZE %s\n",
			j.VMID, j.Decision.Row.Name(), kindOf(j), r.hv.Name(), r.st.Side(), j.BID, j.PID, modeOf(j), j.FSFreeze)
		fmt.Printf("VM dir %s, staging %s\n", j.VMDir, j.BackupDir)
		for _, d := range j.Disks {
			fmt.Printf("disk %d (%s, %s) %s -> %s/disk.%d.%d\n", d.ID, d.Target, d.Format, d.Path, j.BackupDir, d.ID, j.BID)
		}
		return nil
	}
	unlock, err := lockVM(ctx, j.VMDir)
	if err != nil {
		return err
	}
	defer unlock()
	// The export phase on a bridge continues from the point its VM's host just fixed: what
	// looks like leftovers there is this run's snapshot.
	if o.phase != hostwire.PhaseExport {
		if err := r.st.Cleanup(ctx, j, r.hv); err != nil {
			return fmt.Errorf("leftovers of an earlier backup of VM %d: %w", j.VMID, err)
		}
	}
	switch o.phase {
	case hostwire.PhasePoint:
		if err = r.st.(storage.Bridged).Point(ctx, j, r.hv); err == nil && doc.vm.TPMModel() != "" {
			err = printTPM(j)
		}
	case hostwire.PhaseExport:
		err = stage(j, doc, tpmFromEnv)
		if err == nil {
			err = r.st.(storage.Bridged).Export(ctx, j)
		}
		err = recordSums(j, err)
	default:
		err = stage(j, doc, tpmFromVMDir)
		if err == nil {
			err = r.st.Backup(ctx, j, r.hv)
		}
		err = recordSums(j, err)
	}
	if err == nil {
		if o.phase == hostwire.PhasePoint {
			j.Log.Infof("VM %d: backup point of increment %d fixed; the export runs on the bridge", j.VMID, j.BID)
		} else {
			j.Log.Infof("VM %d: staged %s backup %d in %s", j.VMID, kindOf(j), j.BID, j.BackupDir)
		}
		return nil
	}
	// Failed or cancelled: put the VM back as it was, drop this try's anchor and files.
	if ctx.Err() != nil {
		err = fmt.Errorf("backup of VM %d cancelled: %w", j.VMID, err)
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	j.Success = false
	if ferr := r.st.Finish(cctx, j, r.hv); ferr != nil {
		err = fmt.Errorf("%w (cleanup: %v)", err, ferr)
	}
	os.RemoveAll(j.BackupDir)
	return err
}

// recordSums writes the checksum record of a staged backup (after a successful staging): the
// upload carries it, and every later read of the backup is checked against it.
func recordSums(j *hostjob.Job, err error) error {
	if err != nil {
		return err
	}
	if _, err := checksum.WriteDir(j.BackupDir); err != nil {
		return fmt.Errorf("cannot record the checksums of the staged backup in %s: %w", j.BackupDir, err)
	}
	return nil
}

// tpmSource writes disk.tpm.0: from the VM directory on the VM's host, or, on a bridge, from
// what the point phase on the VM's host sent.
type tpmSource func(j *hostjob.Job, out string) error

func tpmFromVMDir(j *hostjob.Job, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	err = tarTPM(filepath.Join(j.VMDir, "tpm"), f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
	}
	return err
}

func tpmFromEnv(j *hostjob.Job, out string) error {
	data, err := base64.StdEncoding.DecodeString(os.Getenv(hostwire.TPMEnv))
	if err != nil || len(data) == 0 {
		return fmt.Errorf("the vTPM state from the VM's host is missing or not base64 (%s)", hostwire.TPMEnv)
	}
	return os.WriteFile(out, data, 0o644)
}

// printTPM sends the vTPM state to the bridge: base64 on stdout, which the frontend passes on.
func printTPM(j *hostjob.Job) error {
	var b strings.Builder
	enc := base64.NewEncoder(base64.StdEncoding, &b)
	if err := tarTPM(filepath.Join(j.VMDir, "tpm"), enc); err != nil {
		return fmt.Errorf("vTPM state: %v", err)
	}
	enc.Close()
	if b.Len() > hostwire.MaxTPMEnv {
		return fmt.Errorf("the vTPM state of VM %d is %d bytes in base64, more than the %d a bridge can be sent", j.VMID, b.Len(), hostwire.MaxTPMEnv)
	}
	_, err := fmt.Println(b.String())
	return err
}

// stage lays out the staging directory: vm.xml and the vTPM state; the disks come after.
func stage(j *hostjob.Job, doc *vmDoc, tpm tpmSource) error {
	if err := os.RemoveAll(j.BackupDir); err != nil {
		return err
	}
	if err := os.MkdirAll(j.BackupDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(j.BackupDir, "vm.xml"), []byte(base64Lines(doc.raw)), 0o644); err != nil {
		return err
	}
	if doc.vm.TPMModel() != "" {
		if err := tpm(j, filepath.Join(j.BackupDir, "disk.tpm.0")); err != nil {
			return fmt.Errorf("vTPM state: %v", err)
		}
	}
	return nil
}

func runPostbackup(ctx context.Context, o *options) error {
	j, _, r, err := prepare(ctx, o)
	if j == nil {
		return err
	}
	// Whatever else failed, the staging area goes.
	defer removeStaging(j)
	if err != nil {
		return err
	}
	if j.DryRun {
		fmt.Printf("VM %d: postbackup (%s), success=%v: keep anchor %d\n", j.VMID, kindOf(j), j.Success, map[bool]int{true: j.BID, false: j.PID}[j.Success])
		return nil
	}
	unlock, err := lockVM(context.WithoutCancel(ctx), j.VMDir)
	if err != nil {
		return err
	}
	defer unlock()
	return r.st.Finish(ctx, j, r.hv)
}

func removeStaging(j *hostjob.Job) {
	if j.DryRun {
		return
	}
	os.RemoveAll(j.BackupDir)
	// With BACKUP_BASE_PATH the staging is <base>/<vid>/backup: <base>/<vid> goes too.
	if parent := filepath.Dir(j.BackupDir); filepath.Base(j.BackupDir) == "backup" && filepath.Base(parent) == fmt.Sprint(j.VMID) && parent != j.VMDir {
		os.RemoveAll(parent)
	}
}

func kindOf(j *hostjob.Job) string {
	k := "full"
	if j.PID >= 0 {
		k = "incremental"
	}
	if j.Decision.Live {
		return k + " live"
	}
	return k + " power-off"
}

func modeOf(j *hostjob.Job) string {
	if !j.Decision.Incremental {
		return "FULL"
	}
	return "INCREMENT/" + string(j.Decision.IncrementMode)
}

// base64Lines is vm.xml: MIME-style base64 (60-character lines) and a trailing newline.
func base64Lines(data []byte) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 60 {
		b.WriteString(enc[:60] + "\n")
		enc = enc[60:]
	}
	b.WriteString(enc + "\n")
	return b.String()
}

// tarTPM writes a gzip'd tar of dir with member names starting with "tpm/".
func tarTPM(dir string, out io.Writer) error {
	if _, err := os.Stat(dir); err != nil {
		return err
	}
	zw := gzip.NewWriter(out)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(filepath.Dir(dir), p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	return err
}
