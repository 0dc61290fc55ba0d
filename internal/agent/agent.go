// Package agent is the far side of remote execution: "onebackup agent" runs on a hypervisor or
// repository host, reads one JSON request on stdin and runs, lists or stops a program without
// any shell. Secrets arrive in the request's environment, never on a command line. A program
// started by "run" lives in its own process group, recorded in a pid file under its token, and
// is stopped when the frontend's ssh session goes away (stdin EOF) or "kill" names its token.
package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"

	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// Operations.
const (
	OpRun  = "run"
	OpKill = "kill"
	OpList = "list"
)

// ExitNotFound is the agent's exit code when the program to run does not exist (as a shell's).
const ExitNotFound = 127

// exitAgent is the agent's own failure (bad request, cannot start).
const exitAgent = 125

// StderrPrefix starts every line the agent itself writes on stderr. When a program exits with
// 255, the code ssh uses for its own failures, the agent says so in such a line: the frontend
// can then tell a failed program from a failed connection.
const StderrPrefix = "onebackup agent: "

// Request is one line of JSON on the agent's stdin.
type Request struct {
	Op    string            `json:"op"`
	Token string            `json:"token,omitempty"`
	Argv  []string          `json:"argv,omitempty"`
	Env   map[string]string `json:"env,omitempty"`
	Dir   string            `json:"dir,omitempty"`
	Grace int               `json:"grace,omitempty"` // run: seconds between SIGTERM and SIGKILL when stopped
}

// File is one entry of a List answer.
type File struct {
	Name      string `json:"name"`
	Size      int64  `json:"size"`
	Allocated int64  `json:"allocated"`
}

// DefaultPath is where this program lives on hosts: $ONEBACKUP_AGENT_PATH, else
// <SCRIPTS_REMOTE_DIR>/datastore/onebackup (the frontend's remotes are synced there).
func DefaultPath() string {
	if p := os.Getenv("ONEBACKUP_AGENT_PATH"); p != "" {
		return p
	}
	return filepath.Join(one.HostRemotesDir(), "datastore", "onebackup")
}

// Main serves one request from stdin and returns the process exit code.
func Main(stdin io.Reader, stdout, stderr io.Writer) int {
	in := bufio.NewReader(stdin)
	line, err := in.ReadBytes('\n')
	if err != nil && len(line) == 0 {
		fmt.Fprintln(stderr, StderrPrefix+"no request on stdin")
		return exitAgent
	}
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		fmt.Fprintln(stderr, StderrPrefix+"malformed request: "+err.Error())
		return exitAgent
	}
	switch req.Op {
	case OpRun:
		return run(req, in, stdout, stderr)
	case OpKill:
		if err := Kill(req.Token); err != nil {
			fmt.Fprintln(stderr, StderrPrefix+err.Error())
			return exitAgent
		}
		return 0
	case OpList:
		files, err := List(req.Dir)
		if err != nil {
			fmt.Fprintln(stderr, StderrPrefix+err.Error())
			return exitAgent
		}
		json.NewEncoder(stdout).Encode(files)
		return 0
	}
	fmt.Fprintf(stderr, "%sunknown operation %q\n", StderrPrefix, req.Op)
	return exitAgent
}

func run(req Request, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(req.Argv) == 0 {
		fmt.Fprintln(stderr, StderrPrefix+"empty command")
		return exitAgent
	}
	if req.Token != "" {
		if err := validate.Token("process token", req.Token); err != nil {
			fmt.Fprintln(stderr, StderrPrefix+err.Error())
			return exitAgent
		}
	}
	prog, err := exec.LookPath(req.Argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "%s%s: %v\n", StderrPrefix, req.Argv[0], err)
		return ExitNotFound
	}
	cmd := exec.Command(prog, req.Argv[1:]...)
	cmd.Args[0] = req.Argv[0]
	cmd.Env = os.Environ()
	for k, v := range req.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "%scannot start %s: %v\n", StderrPrefix, req.Argv[0], err)
		return exitAgent
	}
	pid := cmd.Process.Pid
	grace := graceOf(req.Grace)
	if req.Token != "" {
		if err := writePidFile(req.Token, pid, grace); err != nil {
			syscall.Kill(-pid, syscall.SIGKILL)
			cmd.Wait()
			fmt.Fprintln(stderr, StderrPrefix+err.Error())
			return exitAgent
		}
		defer os.Remove(pidFile(req.Token))
	}

	done := make(chan struct{})
	go func() { // the frontend went away: stop the program
		io.Copy(io.Discard, stdin)
		select {
		case <-done:
		default:
			stopGroup(pid, grace)
		}
	}()
	go func() {
		for range sigs {
			stopGroup(pid, grace)
		}
	}()
	err = cmd.Wait()
	close(done)
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		if ee.ExitCode() == 255 {
			fmt.Fprintf(stderr, "%s%s exited with code 255\n", StderrPrefix, req.Argv[0])
		}
		return ee.ExitCode()
	}
	fmt.Fprintln(stderr, StderrPrefix+err.Error())
	return exitAgent
}

// List returns the regular files directly in dir, sorted by name (C locale).
func List(dir string) ([]File, error) {
	clean, err := validate.AbsPath("directory", dir)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(clean)
	if err != nil {
		return nil, err
	}
	files := []File{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(clean, e.Name()), &st); err != nil {
			return nil, err
		}
		files = append(files, File{Name: e.Name(), Size: st.Size, Allocated: st.Blocks * 512})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	return files, nil
}
