package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"onebackup/internal/backend"
	"onebackup/internal/oned"
	"onebackup/internal/validate"
)

// impersonate is a client of oned acting as the user who asked for the restore, through the
// server credentials of ONE_CIPHER_AUTH (<var>/.one/onegate_auth).
func impersonate(user string) (backend.OnedAPI, error) {
	return oned.Impersonate(user)
}

func restoreCommand(open backend.Opener) *cobra.Command {
	var o options
	c := &cobra.Command{
		Use:   "restore REQUEST_ID",
		Short: "Create images (and a VM template) from a backup (stdin: base64 IMAGE, DATASTORE, DESTINATION_DS_ID, TEMPLATE)",
		Long: "Creates, as TEMPLATE/USERNAME, one image per disk of the restore point in DESTINATION_DS_ID\n" +
			"and, unless TEMPLATE/DISK_ID is given, a VM template using them; prints\n" +
			"\"<template_id|-1> <image_id>…\". Options in TEMPLATE: NAME, NO_IP, NO_NIC, INCREMENT_ID, DISK_ID.\n" +
			"On failure the images already created are deleted again. oned is reached through ONE_XMLRPC\n" +
			"(or one_endpoint) and ONE_CIPHER_AUTH (or <var>/.one/onegate_auth).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := validate.ID("request id", args[0]); err != nil {
				return err
			}
			msg, err := o.message()
			if err != nil {
				return err
			}
			rt, ctx, done := o.runtime()
			defer done()
			out, err := backend.Restore(ctx, rt, open, msg, impersonate)
			if err != nil || rt.DryRun {
				return err
			}
			_, err = fmt.Println(out)
			return err
		},
	}
	o.register(c)
	return c
}
