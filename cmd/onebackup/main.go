// Command onebackup is OpenNebula's restic and rsync backup datastore drivers in one program.
package main

import (
	"os"

	"onebackup/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args)) }
