// Command onebackup-host is the hypervisor side of VM backups (TM prebackup/postbackup work).
// It links libvirt (cgo) and is therefore a separate binary from the frontend's onebackup,
// which stays CGO_ENABLED=0. The frontend copies it to <SCRIPTS_REMOTE_DIR>/tm/onebackup-host.
package main

import (
	"os"

	"onebackup/internal/hostcli"
	_ "onebackup/internal/storage/kvmfile"
)

func main() { os.Exit(hostcli.Main(os.Args)) }
