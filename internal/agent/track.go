package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"onebackup/internal/validate"
)

// How long a stopped process group gets between SIGTERM and SIGKILL, unless the request that
// started it asked for more (a host-side backup rolling back a disk layer), up to maxGrace.
const (
	defaultGrace = 10 * time.Second
	maxGrace     = time.Hour
)

// graceOf is the stop grace a request asks for in seconds (0: the default).
func graceOf(seconds int) time.Duration {
	g := time.Duration(seconds) * time.Second
	switch {
	case g <= 0:
		return defaultGrace
	case g > maxGrace:
		return maxGrace
	}
	return g
}

// stateDir holds the pid files of tracked programs, private to the user.
func stateDir() string {
	if d := os.Getenv("ONEBACKUP_AGENT_STATE"); d != "" {
		return d
	}
	return filepath.Join("/var/tmp", fmt.Sprintf("onebackup-%d", os.Getuid()))
}

func pidFile(token string) string { return filepath.Join(stateDir(), token+".pid") }

// A pid file holds "<pid> <start time> <grace seconds>": the start time (from /proc) tells a
// recycled pid apart; the grace is what the program gets to clean up when it is killed.
func writePidFile(token string, pid int, grace time.Duration) error {
	if err := os.MkdirAll(stateDir(), 0o700); err != nil {
		return err
	}
	start, err := ProcStart(pid)
	if err != nil {
		return err
	}
	tmp := pidFile(token) + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d %s %d\n", pid, start, int(grace/time.Second))), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, pidFile(token))
}

// ProcStart is the start time of a running process (field 22 of /proc/<pid>/stat); a process
// that has exited (even if not yet reaped) is an error.
func ProcStart(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return "", fmt.Errorf("process %d has exited", pid)
	}
	return f[19], nil
}

// Kill stops the process group recorded under token and waits until it is gone. Nothing recorded
// (never started, already finished) is success.
func Kill(token string) error {
	if err := validate.Token("process token", token); err != nil {
		return err
	}
	data, err := os.ReadFile(pidFile(token))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	f := strings.Fields(string(data))
	if len(f) != 2 && len(f) != 3 { // two fields: written by an older agent
		return fmt.Errorf("corrupt pid file %s", pidFile(token))
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid <= 1 {
		return fmt.Errorf("corrupt pid file %s", pidFile(token))
	}
	grace := defaultGrace
	if len(f) == 3 {
		seconds, err := strconv.Atoi(f[2])
		if err != nil {
			return fmt.Errorf("corrupt pid file %s", pidFile(token))
		}
		grace = graceOf(seconds)
	}
	if st, err := ProcStart(pid); err != nil || st != f[1] {
		os.Remove(pidFile(token)) // the recorded process is gone; its pid may be someone else's now
		return nil
	}
	if !stopGroup(pid, grace) {
		return fmt.Errorf("process group %d of %s did not stop", pid, token)
	}
	os.Remove(pidFile(token))
	return nil
}

// stopGroup sends SIGTERM to the process group, then SIGKILL after the grace time, and reports
// whether the group is gone.
func stopGroup(pgid int, grace time.Duration) bool {
	if syscall.Kill(-pgid, syscall.SIGTERM) != nil {
		return true
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !GroupAlive(pgid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	for i := 0; i < 40; i++ {
		if !GroupAlive(pgid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// GroupAlive reports whether a process of group pgid is still running. Zombies do not count:
// they have stopped, and their reaping may lag (orphans are reaped by init).
func GroupAlive(pgid int) bool {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		state, pg, ok := procState(pid)
		if ok && pg == pgid && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}

// procState returns the state letter and process group of pid.
func procState(pid int) (state string, pgrp int, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return "", 0, false
	}
	pg, err := strconv.Atoi(f[2])
	return f[0], pg, err == nil
}
