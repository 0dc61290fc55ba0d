package hostjob

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Journal records live state changes of a run in <tmp dir>/journal.json before they are made,
// so that a later run (retry, cancel, postbackup) can undo them deterministically. Either side
// writes its own fields: the hypervisor its freeze, the storage its helper processes.
type Journal struct {
	Frozen string `json:"frozen,omitempty"` // AGENT | SUSPEND while the guest may be frozen
	// FrozenMounts are the host mount points an LXC AGENT freeze froze (fsfreeze).
	FrozenMounts []string `json:"frozen_mounts,omitempty"`
	NBDPid       int      `json:"nbd_pid,omitempty"`   // qemu-nbd serving a power-off increment
	NBDStart     string   `json:"nbd_start,omitempty"` // its /proc start time (pid reuse guard)
	NBDSock      string   `json:"nbd_sock,omitempty"`
	// Activated are the logical volumes (vg/lv) this run activated and must deactivate again.
	Activated []string `json:"activated,omitempty"`
}

func journalPath(tmp string) string { return filepath.Join(tmp, "journal.json") }

// LoadJournal reads the journal of the VM whose tmp dir is tmp (empty when there is none).
func LoadJournal(tmp string) Journal {
	var j Journal
	if data, err := os.ReadFile(journalPath(tmp)); err == nil {
		json.Unmarshal(data, &j)
	}
	return j
}

// SaveJournal writes the journal atomically (a crash leaves the old or the new one).
func SaveJournal(tmp string, j Journal) error {
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	data, _ := json.Marshal(j)
	p := journalPath(tmp)
	if err := os.WriteFile(p+".new", data, 0o644); err != nil {
		return err
	}
	f, err := os.Open(p + ".new")
	if err == nil {
		f.Sync()
		f.Close()
	}
	return os.Rename(p+".new", p)
}

// ProcStart is field 22 of /proc/<pid>/stat ("" when the process is gone or a zombie).
func ProcStart(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return ""
	}
	return f[19]
}

// StopRecorded stops a process recorded with its start time, if it is still that process.
func StopRecorded(pid int, start string) error {
	if pid <= 0 || start == "" || ProcStart(pid) != start {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if ProcStart(pid) != start {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	if ProcStart(pid) == start {
		return errors.New("leftover qemu-nbd " + strconv.Itoa(pid) + " does not stop")
	}
	return nil
}
