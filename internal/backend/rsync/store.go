package rsync

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"onebackup/internal/backend"
	"onebackup/internal/chain"
	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// Store is a configured rsync datastore.
type Store struct {
	cfg *Config
	rt  *backend.Runtime
}

// Open validates the datastore's attributes.
func Open(ds *one.Datastore, rt *backend.Runtime) (backend.Store, error) {
	cfg, err := ParseConfig(ds)
	if err != nil {
		return nil, err
	}
	return &Store{cfg: cfg, rt: rt}, nil
}

// Backend implements backend.Store.
func (s *Store) Backend() string { return "rsync" }

// target is the rsync host, as RSYNC_USER.
func (s *Store) target() remote.Target { return remote.Target{Host: s.cfg.Host, User: s.cfg.User} }

// vmDir is <BASE_PATH>/<vm_id>, the directory of a VM's backups.
func (s *Store) vmDir(vmID int) (string, error) {
	if vmID < 0 {
		return "", fmt.Errorf("the VM id of the backup is unknown: cannot tell where its backups are")
	}
	return path.Join(s.cfg.BasePath, strconv.Itoa(vmID)), nil
}

// backupDir is <BASE_PATH>/<vm_id>/<snap>, checked to be exactly that: snap must be a valid
// directory name (never "", ".", ".." or a path) so the result can never be the VM's directory,
// BASE_PATH or anything outside it.
func (s *Store) backupDir(vmID int, snap string) (string, error) {
	vm, err := s.vmDir(vmID)
	if err != nil {
		return "", err
	}
	if err := chain.CheckSnap("rsync", snap); err != nil {
		return "", err
	}
	d := path.Join(vm, snap)
	if path.Dir(d) != vm || path.Base(d) != snap || path.Dir(vm) != s.cfg.BasePath {
		return "", fmt.Errorf("backup directory %q is not <BASE_PATH>/<vm_id>/<backup_id>", d)
	}
	return d, nil
}

// Files implements backend.Store: the disk.* files of a backup directory.
func (s *Store) Files(ctx context.Context, loc backend.Location, snap string) ([]string, error) {
	dir, err := s.backupDir(loc.VMID, snap)
	if err != nil {
		return nil, err
	}
	// find takes "disk.*" as a pattern argument: no shell sees it (remote.Quote quotes it).
	find := remote.Cmd{Target: s.target(), Argv: []string{"find", dir, "-maxdepth", "1", "-type", "f", "-name", "disk.*", "-print0"}}
	res, err := s.rt.Run(ctx, find, false)
	if err != nil {
		if strings.Contains(remote.StderrOf(err), "No such file or directory") {
			return nil, fmt.Errorf("backup %s of VM %d does not exist on %s (no directory %s)", snap, loc.VMID, s.target(), dir)
		}
		return nil, fmt.Errorf("cannot list backup %s of VM %d: %w", snap, loc.VMID, err)
	}
	var files []string
	for _, f := range bytes.Split(res.Stdout, []byte{0}) {
		p := string(f)
		if p == "" {
			continue
		}
		if path.Dir(p) != dir || path.Clean(p) != p {
			return nil, fmt.Errorf("unexpected file %q listed in %s on %s", p, dir, s.target())
		}
		files = append(files, p)
	}
	sort.Strings(files)
	return files, nil
}

// ReadVMXML implements backend.Store: the vm.xml beside the disk, which must be a file of
// backup snap of this datastore (a URL naming any other directory is refused).
func (s *Store) ReadVMXML(ctx context.Context, loc backend.Location, snap, diskPath string) ([]byte, error) {
	dir, err := s.backupDir(loc.VMID, snap)
	if err != nil {
		return nil, err
	}
	if path.Dir(diskPath) != dir {
		return nil, fmt.Errorf("backup URL file %s is not in backup %s of VM %d of this datastore (%s)", diskPath, snap, loc.VMID, dir)
	}
	doc := path.Join(dir, "vm.xml")
	res, err := s.rt.Run(ctx, remote.Cmd{Target: s.target(), Argv: []string{"cat", "--", doc}}, false)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", doc, err)
	}
	return res.Stdout, nil
}

// Remove implements backend.Store: delete the backup directories; missing ones are skipped and
// the VM's directory is kept.
func (s *Store) Remove(ctx context.Context, loc backend.Location, snaps []string) error {
	if len(snaps) == 0 {
		return fmt.Errorf("nothing to remove")
	}
	var dirs []string
	for _, snap := range snaps {
		d, err := s.backupDir(loc.VMID, snap)
		if err != nil {
			return err
		}
		dirs = append(dirs, d)
	}
	if err := s.removeDirs(ctx, dirs); err != nil {
		return fmt.Errorf("unable to remove backups %v of VM %d: %w", snaps, loc.VMID, err)
	}
	return nil
}

// removeDirs runs rm -rf on backup directories (already checked by backupDir). A writer that
// is still finishing on the rsync host (the receiver of a cancelled upload) can make rm find a
// directory not empty: rm is retried a few times.
func (s *Store) removeDirs(ctx context.Context, dirs []string) error {
	rm := remote.Cmd{Target: s.target(), Argv: append([]string{"rm", "-rf", "--"}, dirs...)}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return err
			case <-time.After(time.Second):
			}
		}
		if _, err = s.rt.Run(ctx, rm, true); err == nil || remote.ExitCode(err) == 255 {
			return err
		}
	}
	return err
}

// Usage implements backend.Store: the filesystem holding BASE_PATH on the rsync host.
func (s *Store) Usage(ctx context.Context) (backend.Usage, error) {
	return backend.DiskUsage(ctx, s.rt, s.target(), s.cfg.BasePath)
}

// remoteStderr is the far side's error output of a failed command, or "".
