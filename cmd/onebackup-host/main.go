// Command onebackup-host is the hypervisor side of VM backups (TM prebackup/postbackup work).
// It links libvirt and librbd (cgo) and is therefore a separate binary from the frontend's onebackup,
// which stays CGO_ENABLED=0. The frontend copies it to <SCRIPTS_REMOTE_DIR>/tm/onebackup-host.
//
// The imports below are the sides built in: one per hypervisor, one per storage. A matrix row
// is served when both of its sides are here (TestServedRowsAreBuilt keeps the table honest).
package main

import (
	"os"

	"onebackup/internal/hostcli"
	_ "onebackup/internal/hypervisor/kvm"
	_ "onebackup/internal/hypervisor/lxc"
	_ "onebackup/internal/storage/file"
	_ "onebackup/internal/storage/lvm"
	_ "onebackup/internal/storage/rbd"
)

func main() { os.Exit(hostcli.Main(os.Args)) }
