package one

import (
	"fmt"
	"path"
	"strings"

	"onebackup/internal/validate"
)

// BackupArgs is the argv oned gives the backup action:
// host:vm_system_dir disk_ids deploy_id bj_id|- vm_id system_ds_id.
type BackupArgs struct {
	Host     string
	VMDir    string // cleaned vm_system_dir
	DeployID string
	JobID    string // "" when argv has "-"
	VMID     int
	SysDSID  int
}

// ParseBackupArgs validates the six positional arguments of backup.
func ParseBackupArgs(args []string) (*BackupArgs, error) {
	if len(args) != 6 {
		return nil, fmt.Errorf("backup takes 6 arguments (host:vm_dir disk_ids deploy_id bj_id|- vm_id system_ds_id), got %d", len(args))
	}
	host, dir, err := ParseHostDir(args[0])
	if err != nil {
		return nil, err
	}
	if args[1] != "" && strings.Trim(args[1], "0123456789:") != "" {
		return nil, fmt.Errorf("invalid disk id list %q: expected ids separated by ':'", args[1])
	}
	if err := validate.Token("deploy id", args[2]); err != nil {
		return nil, err
	}
	b := &BackupArgs{Host: host, VMDir: dir, DeployID: args[2]}
	if args[3] != "-" {
		if _, err := validate.ID("backup job id", args[3]); err != nil {
			return nil, err
		}
		b.JobID = args[3]
	}
	if b.VMID, err = validate.ID("VM id", args[4]); err != nil {
		return nil, err
	}
	if b.SysDSID, err = validate.ID("system datastore id", args[5]); err != nil {
		return nil, err
	}
	return b, nil
}

// ParseHostDir splits and validates "host:/abs/dir".
func ParseHostDir(s string) (host, dir string, err error) {
	host, dir, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("invalid host:dir argument %q", s)
	}
	if err := validate.Host("host", host); err != nil {
		return "", "", err
	}
	dir, err = validate.AbsPath("VM directory", dir)
	return host, dir, err
}

// StagingDir is where prebackup left the files to upload: <BACKUP_BASE_PATH>/<vm_id>/backup
// when datastore.conf sets it, else <vm_dir>/backup.
func StagingDir(conf map[string]string, vmDir string, vmID int) (string, error) {
	if base := conf["BACKUP_BASE_PATH"]; base != "" {
		base, err := validate.AbsPath("BACKUP_BASE_PATH in datastore.conf", base)
		if err != nil {
			return "", err
		}
		return path.Join(base, fmt.Sprint(vmID), "backup"), nil
	}
	return path.Join(vmDir, "backup"), nil
}
