package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"onebackup/internal/backend"
	"onebackup/internal/backend/restic"
	"onebackup/internal/backend/rsync"
	"onebackup/internal/one"
	"onebackup/internal/oned"
	"onebackup/internal/tm"
	"onebackup/internal/validate"
)

// backends maps a DS_MAD name to its Store constructor.
var backends = map[string]backend.Opener{
	"restic": restic.Open,
	"rsync":  rsync.Open,
}

func init() { tm.Backends = backends }

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
			"on the VM's host (or LAST_BRIDGE, for Ceph VMs) and prints \"<backup_id> <size_mb> <format>\".\n" +
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

// action is a datastore action that reads the action XML, checks its id argument (when it takes
// one) and prints what run returns.
type action struct {
	use, short, long string
	idName           string // what the one positional argument is; "" when there is none
	run              func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error)
}

func (a action) command(flags func(*pflag.FlagSet)) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use: a.use, Short: a.short, Long: a.long, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.idName != "" {
				if _, err := validate.ID(a.idName, args[0]); err != nil {
					return err
				}
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			out, err := a.run(ctx, rt, msg)
			if err != nil || rt.DryRun {
				return err
			}
			_, err = io.WriteString(os.Stdout, out)
			return err
		},
	}
	if a.idName != "" {
		c.Args = cobra.ExactArgs(1)
	}
	o.register(c)
	if flags != nil {
		flags(c.Flags())
	}
	return c
}

func rmCommand(open backend.Opener) *cobra.Command {
	return action{
		use: "rm IMAGE_ID", idName: "image id",
		short: "Delete every restore point of a backup image (stdin: base64 IMAGE and DATASTORE)",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			return "", backend.Remove(ctx, rt, open, msg)
		},
	}.command(nil)
}

func statCommand(open backend.Opener) *cobra.Command {
	return action{
		use: "stat REQUEST_ID", idName: "request id",
		short: "Print the size (MiB) of the disk a backup URL points to (stdin: base64 IMAGE and DATASTORE)",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			size, err := backend.Stat(ctx, rt, open, msg)
			return size + "\n", err
		},
	}.command(nil)
}

func monitorCommand(open backend.Opener) *cobra.Command {
	return action{
		use: "monitor DATASTORE_ID", idName: "datastore id",
		short: "Print the datastore's USED_MB, TOTAL_MB and FREE_MB (stdin: base64 DATASTORE)",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			u, err := backend.Monitor(ctx, rt, open, msg)
			var b strings.Builder
			one.MonitorReply(&b, u.UsedMB, u.TotalMB, u.FreeMB)
			return b.String(), err
		},
	}.command(nil)
}

func lsCommand(open backend.Opener) *cobra.Command {
	var incr int
	return action{
		use:   "ls [-i INCREMENT_ID]",
		short: "Print the URLs of the disks of a backup as JSON (stdin: DATASTORE, VM and IMAGE)",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			urls, err := backend.List(ctx, rt, open, msg, incr)
			if err != nil {
				return "", err
			}
			var b strings.Builder
			enc := json.NewEncoder(&b) // one line, keys sorted, no HTML escaping
			enc.SetEscapeHTML(false)
			err = enc.Encode(urls)
			return b.String(), err
		},
	}.command(func(f *pflag.FlagSet) {
		f.IntVarP(&incr, "increment", "i", -1, "restore point to list (-1: the last one)")
	})
}

func flattenCommand(open backend.Opener) *cobra.Command {
	return action{
		use: "increment_flatten IMAGE_ID", idName: "image id",
		short: "Merge the oldest increments beyond KEEP_LAST (stdin: base64 IMAGE, DATASTORE, EXTRA_DATA)",
		long: "With N restore points and KEEP_LAST K < N, merges the oldest N-K+1 into one full restore point\n" +
			"and prints \"<size_mb> <chain>\"; prints nothing when N <= K.",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			out, err := backend.IncrementFlatten(ctx, rt, open, msg)
			if out != "" {
				out += "\n"
			}
			return out, err
		},
	}.command(nil)
}

func restoreCommand(open backend.Opener) *cobra.Command {
	return action{
		use: "restore REQUEST_ID", idName: "request id",
		short: "Create images (and a VM template) from a backup (stdin: base64 IMAGE, DATASTORE, DESTINATION_DS_ID, TEMPLATE)",
		long: "Creates, as TEMPLATE/USERNAME, one image per disk of the restore point in DESTINATION_DS_ID\n" +
			"and, unless TEMPLATE/DISK_ID is given, a VM template using them; prints\n" +
			"\"<template_id|-1> <image_id>…\". Options in TEMPLATE: NAME, NO_IP, NO_NIC, INCREMENT_ID, DISK_ID.\n" +
			"On failure the images already created are deleted again. oned is reached through ONE_XMLRPC\n" +
			"(or one_endpoint) and ONE_CIPHER_AUTH (or <var>/.one/onegate_auth).",
		run: func(ctx context.Context, rt *backend.Runtime, msg *one.Message) (string, error) {
			out, err := backend.Restore(ctx, rt, open, msg, impersonate)
			return out + "\n", err
		},
	}.command(nil)
}

// impersonate is a client of oned acting as the user who asked for the restore, through the
// server credentials of ONE_CIPHER_AUTH (<var>/.one/onegate_auth).
func impersonate(user string) (backend.OnedAPI, error) { return oned.Impersonate(user) }

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
