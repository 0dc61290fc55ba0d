package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/backend/restic"
	"onebackup/internal/backend/rsync"
	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// backends maps a DS_MAD name to its Store constructor.
var backends = map[string]backend.Opener{
	"restic": restic.Open,
	"rsync":  rsync.Open,
}

// unsupported lists the DS MAD actions a backup datastore refuses, per backend.
var unsupported = map[string][]string{
	"restic": {"cp", "clone", "mkfs", "snap_delete", "snap_revert", "snap_flatten"},
	"rsync":  {"cp", "clone", "mkfs", "snap_delete", "snap_revert", "snap_flatten", "export"},
}

func backendCommand(name string, open backend.Opener) *cobra.Command {
	c := &cobra.Command{Use: name, Short: "Actions of the " + name + " backup datastore driver"}
	c.AddCommand(
		backupCommand(name, open),
		backupCancelCommand(name),
		rmCommand(open),
		statCommand(open),
		monitorCommand(open),
		lsCommand(open),
		flattenCommand(open),
		restoreCommand(open),
		downloaderCommand(open),
		streamCommand(open),
	)
	for _, a := range unsupported[name] {
		c.AddCommand(unsupportedCommand(a))
	}
	return c
}

func backupCommand(name string, open backend.Opener) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "backup HOST:VM_DIR DISK_IDS DEPLOY_ID BJ_ID|- VM_ID SYSTEM_DS_ID",
		Short: "Upload the staged backup of a VM (stdin: DS_DRIVER_ACTION_DATA with DATASTORE and VM)",
		Long: "Uploads the files prebackup staged in <VM_DIR>/backup (or <BACKUP_BASE_PATH>/<VM_ID>/backup)\n" +
			"on the VM's host (or LAST_BRIDGE) and prints \"<backup_id> <size_mb> <format>\".\n" +
			"SIGTERM or backup_cancel stops the upload, cleans the destination and fails the action.",
		Args: cobra.ExactArgs(6),
		RunE: func(cmd *cobra.Command, args []string) error {
			bargs, err := one.ParseBackupArgs(args)
			if err != nil {
				return err
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			res, err := backend.RunBackup(ctx, rt, open, msg, bargs)
			done() // ends the progress line before the reply
			if err != nil || res == nil {
				return err
			}
			return one.BackupReply(os.Stdout, res.ID, res.Size, res.Format)
		},
	}
	o.register(c)
	return c
}

func backupCancelCommand(name string) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "backup_cancel HOST:VM_DIR DEPLOY_ID",
		Short: "Stop the running backup of a VM (stdin: the VM XML)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := one.ParseHostDir(args[0]); err != nil {
				return err
			}
			if err := validate.Token("deploy id", args[1]); err != nil {
				return err
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			vm, err := msg.VM()
			if err != nil {
				return err
			}
			vmID, err := vm.ID()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			return backend.CancelBackup(ctx, rt, name, vmID, args[1])
		},
	}
	o.register(c)
	return c
}

func rmCommand(open backend.Opener) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "rm IMAGE_ID",
		Short: "Delete every restore point of a backup image (stdin: base64 IMAGE and DATASTORE)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := validate.ID("image id", args[0]); err != nil {
				return err
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			return backend.Remove(ctx, rt, open, msg)
		},
	}
	o.register(c)
	return c
}

func statCommand(open backend.Opener) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "stat REQUEST_ID",
		Short: "Print the size (MiB) of the disk a backup URL points to (stdin: base64 IMAGE and DATASTORE)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			size, err := backend.Stat(ctx, rt, open, msg)
			if err != nil || rt.DryRun {
				return err
			}
			_, err = fmt.Println(size)
			return err
		},
	}
	o.register(c)
	return c
}

func monitorCommand(open backend.Opener) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "monitor DATASTORE_ID",
		Short: "Print the datastore's USED_MB, TOTAL_MB and FREE_MB (stdin: base64 DATASTORE)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := validate.ID("datastore id", args[0]); err != nil {
				return err
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			u, err := backend.Monitor(ctx, rt, open, msg)
			if err != nil || rt.DryRun {
				return err
			}
			return one.MonitorReply(os.Stdout, u.UsedMB, u.TotalMB, u.FreeMB)
		},
	}
	o.register(c)
	return c
}

func lsCommand(open backend.Opener) *cobra.Command {
	var o options
	var incr int
	c := &cobra.Command{
		Use:   "ls [-i INCREMENT_ID]",
		Short: "Print the URLs of the disks of a backup as JSON (stdin: DATASTORE, VM and IMAGE)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			urls, err := backend.List(ctx, rt, open, msg, incr)
			if err != nil || rt.DryRun {
				return err
			}
			return writeJSON(os.Stdout, urls)
		},
	}
	c.Flags().IntVarP(&incr, "increment", "i", -1, "restore point to list (-1: the last one)")
	o.register(c)
	return c
}

func unsupportedCommand(action string) *cobra.Command {
	return &cobra.Command{
		Use:                action,
		Short:              "Not supported by backup datastores",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !isTerminal(os.Stdin) {
				io.Copy(io.Discard, os.Stdin)
			}
			return &exitError{code: one.ExitUnsupported, err: fmt.Errorf("%s: Operation not supported", action)}
		},
	}
}

// writeJSON prints a map as one line of JSON (keys sorted) without HTML escaping.
func writeJSON(w io.Writer, m map[string]string) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(m)
}
