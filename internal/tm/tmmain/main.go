// Command tmmain is a stand-alone build of the frontend TM backup actions, for tests and
// operators until "tm" is registered in the onebackup binary. It runs as
// <dir>/tm/<tm_mad>/<action> (links) or as "tmmain tm <tm_mad> <action> …".
package main

import (
	"fmt"
	"os"

	"onebackup/internal/tm"
)

func main() {
	args, ok := tm.DriverArgs(os.Args)
	if !ok {
		args = os.Args[1:]
	}
	if len(args) < 3 || args[0] != "tm" {
		fmt.Fprintln(os.Stderr, "usage: tmmain tm <tm_mad> <action> host:vm_dir disk_ids deploy_id bj_id vm_id sys_ds_id < VM XML")
		os.Exit(1)
	}
	os.Exit(tm.Main(args[1], args[2], args[3:], os.Stdin, os.Stderr))
}
