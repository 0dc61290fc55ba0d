// Package remote runs programs locally or on another host over ssh, always from an argv slice.
// Programs that need secrets in their environment or that must be tracked for cancellation run
// through this project's agent on the far side (see internal/agent), which receives the request
// on stdin: secrets never appear on a command line.
package remote

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"onebackup/internal/agent"
)

// Target is where a command runs: the local machine when Host is empty.
type Target struct {
	Host string
	User string
}

// Local is the machine the driver runs on (the frontend).
var Local = Target{}

func (t Target) String() string {
	switch {
	case t.Host == "":
		return "the frontend"
	case t.User != "":
		return t.User + "@" + t.Host
	default:
		return t.Host
	}
}

func (t Target) dest() string {
	if t.User != "" {
		return t.User + "@" + t.Host
	}
	return t.Host
}

// Cmd is one program run.
type Cmd struct {
	Target       Target
	Argv         []string
	Env          map[string]string // for the program only; may hold secrets
	Agent        bool              // remote: run through the agent (implied by Env or Token)
	Token        string            // remote: track the process under this token for Kill
	ForwardAgent bool              // remote: forward the frontend's ssh agent
	StopGrace    time.Duration     // remote: time between SIGTERM and SIGKILL when stopped (agent default: 10 s)
	Stdout       io.Writer         // stream stdout here instead of capturing it
	Stdin        io.Reader         // the program's stdin (not through the agent, which uses it)
}

// Result is what a finished command left.
type Result struct {
	Stdout []byte
	Stderr []byte
}

// ExitError is a command that ran and failed, or an ssh connection that failed.
type ExitError struct {
	Target Target
	Prog   string
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	detail := LastLines(e.Stderr, 3)
	if detail == "" {
		detail = "no error output"
	}
	if e.Target.Host != "" && e.Code == 255 && !strings.Contains(e.Stderr, agent.StderrPrefix) {
		problem := SSHProblem(e.Stderr)
		if problem == "" {
			problem = "connection failed"
		}
		return fmt.Sprintf("ssh to %s failed: %s: %s", e.Target, problem, detail)
	}
	if low := strings.ToLower(e.Stderr); strings.Contains(low, "no space left on device") || strings.Contains(low, "disk quota exceeded") {
		return fmt.Sprintf("%s on %s failed: destination full: %s", e.Prog, e.Target, detail)
	}
	if e.Target.Host != "" && e.Code == agent.ExitNotFound {
		if !strings.Contains(e.Stderr, agent.StderrPrefix) { // the shell could not start the agent itself
			return fmt.Sprintf("onebackup is not installed on %s (%s): copy the remotes there with `onehost sync`", e.Target, detail)
		}
		return fmt.Sprintf("%s not found on %s: %s", e.Prog, e.Target, detail)
	}
	if hop := SSHProblem(e.Stderr); hop != "" {
		// The program's own ssh (restic's sftp, rsync's transport) to the next host failed.
		return fmt.Sprintf("%s on %s could not connect onwards: %s: %s", e.Prog, e.Target, hop, detail)
	}
	return fmt.Sprintf("%s on %s exited with code %d: %s", e.Prog, e.Target, e.Code, detail)
}

// SSHProblem names the usual reasons an ssh connection fails, for the operator ("" when stderr
// shows none of them).
func SSHProblem(stderr string) string {
	switch {
	case strings.Contains(stderr, "Could not resolve hostname"):
		return "unknown host"
	case strings.Contains(stderr, "Connection refused"), strings.Contains(stderr, "No route to host"),
		strings.Contains(stderr, "Connection timed out"), strings.Contains(stderr, "Network is unreachable"):
		return "host unreachable"
	case strings.Contains(stderr, "Permission denied ("), strings.Contains(stderr, "Too many authentication failures"):
		return "authentication refused (check oneadmin's keys and the ssh agent)"
	case strings.Contains(stderr, "Host key verification failed"):
		return "host key verification failed (check known_hosts)"
	case strings.Contains(stderr, "not responding") && strings.Contains(stderr, "Timeout, server"):
		return fmt.Sprintf("the server stopped responding (no answer to ssh keep-alives for %s)", StallTimeout*3/4)
	case strings.Contains(stderr, "Connection closed by") || strings.Contains(stderr, "Connection reset by") ||
		strings.Contains(stderr, "closed by remote host") || strings.Contains(stderr, "connection unexpectedly closed"),
		// restic's SFTP backend when its ssh child ended with ssh's own error code, whose
		// message restic did not always relay before exiting.
		strings.Contains(stderr, "ssh command exited: exit status 255"):
		return "connection closed by the server (its sshd stopped or the link broke)"
	}
	return ""
}

// KeepAlive are the ssh options of every connection the drivers open, directly or through
// restic and rsync: a peer that stops answering (its sshd stopped, a network path that drops
// everything without a reset) ends the connection after about StallTimeout instead of leaving
// the backup waiting for ever; a slow link that still moves data is not affected. ssh says why
// it gave up only at log level INFO (its default, often lowered to ERROR in ssh_config to hide
// warnings), so that level is set here for the operator to get the cause. A host that is down
// fails the connection after ConnectTimeout rather than the kernel's two minutes.
var KeepAlive = []string{"-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=20", "-o", "LogLevel=INFO"}

// StallTimeout is the longest a connection whose peer stopped answering can last (KeepAlive).
const StallTimeout = 40 * time.Second

// StderrOf is the error output of the program err reports, "" when err is no ExitError.
func StderrOf(err error) string {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return ""
}

// ExitCode is the exit code of err when it is an ExitError, else -1.
func ExitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// Runner runs commands. Its zero value uses "ssh" from PATH and the default agent path.
type Runner struct {
	SSH       string // ssh client binary
	AgentPath string // path of this program on remote hosts
}

func (r *Runner) sshBin() string {
	if r.SSH != "" {
		return r.SSH
	}
	return "ssh"
}

// SSHArgs is the ssh invocation for a target; the remote command follows it.
func (r *Runner) SSHArgs(t Target, forward bool) []string {
	fwd := "ForwardAgent=no"
	if forward {
		fwd = "ForwardAgent=yes"
	}
	argv := []string{r.sshBin(), "-T", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
		"-o", "ControlPath=none", "-o", fwd}
	return append(append(argv, KeepAlive...), "--", t.dest())
}

// Run executes c and waits for it. A cancelled ctx sends SIGTERM (ssh then closes the session and
// the far-side agent stops the program it started).
func (r *Runner) Run(ctx context.Context, c Cmd) (*Result, error) {
	if len(c.Argv) == 0 {
		return nil, errors.New("empty command")
	}
	var argv []string
	var request []byte
	useAgent := c.Target.Host != "" && (c.Agent || len(c.Env) > 0 || c.Token != "" || c.StopGrace > 0)
	if useAgent && c.Stdin != nil {
		return nil, errors.New("a program run through the agent gets no stdin")
	}
	switch {
	case c.Target.Host == "":
		argv = c.Argv
	case useAgent:
		req, err := json.Marshal(agent.Request{Op: agent.OpRun, Token: c.Token, Argv: c.Argv, Env: c.Env,
			Grace: int(c.StopGrace / time.Second)})
		if err != nil {
			return nil, err
		}
		remoteCmd, err := Quote([]string{r.agentPath(), "agent"})
		if err != nil {
			return nil, err
		}
		argv = append(r.SSHArgs(c.Target, c.ForwardAgent), remoteCmd)
		request = append(req, '\n')
	default:
		remoteCmd, err := Quote(c.Argv)
		if err != nil {
			return nil, err
		}
		argv = append(r.SSHArgs(c.Target, c.ForwardAgent), remoteCmd)
	}

	// A program whose output can no longer be delivered (the reader went away, as the first,
	// sniffing read of OpenNebula's downloader.sh does after 1 KiB) is stopped with SIGTERM like
	// a cancelled one. Left to die of SIGPIPE itself, restic leaves its repository lock behind,
	// and every later prune or check waits for it.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	if c.Target.Host == "" && len(c.Env) > 0 {
		cmd.Env = mergeEnv(os.Environ(), c.Env)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	if c.Stdout != nil {
		cmd.Stdout = &stopOnError{w: c.Stdout, stop: stop}
	}
	cmd.Stderr = &limitedBuffer{buf: &stderr, max: 1 << 20}
	if request == nil && c.Stdin != nil {
		cmd.Stdin = c.Stdin
	}
	err := start(cmd, request)
	if err == nil {
		err = cmd.Wait()
	}
	res := &Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	if err == nil {
		return res, nil
	}
	if ctx.Err() != nil {
		var we *writeError
		if errors.As(context.Cause(ctx), &we) {
			return res, fmt.Errorf("%s on %s stopped: its output could not be written: %w", progName(c.Argv), c.Target, we.err)
		}
		return res, fmt.Errorf("%s on %s: %w", progName(c.Argv), c.Target, ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if code < 0 {
			code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
		return res, &ExitError{Target: c.Target, Prog: progName(c.Argv), Code: code, Stderr: stderr.String()}
	}
	return res, fmt.Errorf("cannot run %s on %s: %w", progName(c.Argv), c.Target, err)
}

// start starts cmd; with a request, it is written on stdin and the pipe is kept open until the
// command ends: its EOF tells the far-side agent that the frontend is gone.
func start(cmd *exec.Cmd, request []byte) error {
	if request == nil {
		return cmd.Start()
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	_, err = in.Write(request)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
	return err
}

// Kill stops the program tracked under token on target, waiting until it is gone. It succeeds
// when nothing runs under that token.
func (r *Runner) Kill(ctx context.Context, t Target, token string) error {
	if t.Host == "" {
		return agent.Kill(token)
	}
	req, err := json.Marshal(agent.Request{Op: agent.OpKill, Token: token})
	if err != nil {
		return err
	}
	remoteCmd, err := Quote([]string{r.agentPath(), "agent"})
	if err != nil {
		return err
	}
	argv := append(r.SSHArgs(t, false), remoteCmd)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(append(req, '\n'))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return &ExitError{Target: t, Prog: "onebackup agent kill", Code: cmd.ProcessState.ExitCode(), Stderr: stderr.String()}
	}
	return nil
}

// List returns the regular files of dir on target (through the agent when remote).
func (r *Runner) List(ctx context.Context, t Target, dir string) ([]agent.File, error) {
	if t.Host == "" {
		return agent.List(dir)
	}
	req, err := json.Marshal(agent.Request{Op: agent.OpList, Dir: dir})
	if err != nil {
		return nil, err
	}
	remoteCmd, err := Quote([]string{r.agentPath(), "agent"})
	if err != nil {
		return nil, err
	}
	argv := append(r.SSHArgs(t, false), remoteCmd)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(append(req, '\n'))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, &ExitError{Target: t, Prog: "onebackup agent", Code: cmd.ProcessState.ExitCode(), Stderr: stderr.String()}
	}
	var files []agent.File
	if err := json.Unmarshal(stdout.Bytes(), &files); err != nil {
		return nil, fmt.Errorf("unexpected answer from the agent on %s: %v", t, err)
	}
	return files, nil
}

func (r *Runner) agentPath() string {
	if r.AgentPath != "" {
		return r.AgentPath
	}
	return agent.DefaultPath()
}

// Describe renders c for a person (dry runs, debug logs); environment values are hidden.
func (r *Runner) Describe(c Cmd) string {
	var b strings.Builder
	b.WriteString("on " + c.Target.String())
	if c.Target.Host != "" {
		b.WriteString(" (ssh")
		if c.ForwardAgent {
			b.WriteString(", agent forwarded")
		}
		b.WriteString(")")
	}
	b.WriteString(": ")
	if len(c.Env) > 0 {
		names := make([]string, 0, len(c.Env))
		for k := range c.Env {
			names = append(names, k+"=***")
		}
		sort.Strings(names)
		b.WriteString("env " + strings.Join(names, " ") + " ")
	}
	q, _ := Quote(c.Argv)
	b.WriteString(q)
	return b.String()
}

func progName(argv []string) string {
	p := argv[0]
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		p = p[i+1:]
	}
	return p
}

func mergeEnv(base []string, extra map[string]string) []string {
	out := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); extra[k] == "" {
			out = append(out, kv)
		}
	}
	for k, v := range extra {
		out = append(out, k+"="+v)
	}
	return out
}

// LastLines returns the last n non-empty lines of s joined with "; ".
func LastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

type limitedBuffer struct {
	buf *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		if len(p) > room {
			l.buf.Write(p[:room])
		} else {
			l.buf.Write(p)
		}
	}
	return len(p), nil
}

// LineWriter calls fn for every complete line written to it.
func LineWriter(fn func(line []byte)) io.Writer { return &lineWriter{fn: fn} }

type lineWriter struct {
	fn  func([]byte)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// stopOnError passes a program's output on and stops the program at the first write error.
// What the program writes after that is drained and dropped: a pipe closed under it would kill
// it with SIGPIPE before the SIGTERM arrives.
type stopOnError struct {
	w      io.Writer
	stop   context.CancelCauseFunc
	failed bool
}

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

func (s *stopOnError) Write(p []byte) (int, error) {
	if s.failed {
		return len(p), nil
	}
	n, err := s.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		s.failed = true
		s.stop(&writeError{err})
		return len(p), nil
	}
	return len(p), nil
}
