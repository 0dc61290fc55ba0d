package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"onebackup/internal/one"
)

// onedFormatter writes "INFO: message" lines, the prefixes oned's driver framework turns into
// log entries of that severity (and keeps out of the failure message).
type onedFormatter struct{}

func (onedFormatter) Format(e *logrus.Entry) ([]byte, error) {
	level := strings.ToUpper(e.Level.String())
	switch e.Level {
	case logrus.WarnLevel:
		level = "WARN"
	case logrus.TraceLevel:
		level = "DEBUG"
	}
	msg := strings.ReplaceAll(one.Redact(e.Message), "\n", " ")
	return []byte(level + ": " + msg + "\n"), nil
}

func newLogger(w io.Writer, verbose bool) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(w)
	l.SetFormatter(onedFormatter{})
	l.SetLevel(logrus.InfoLevel)
	if verbose {
		l.SetLevel(logrus.DebugLevel)
	}
	return l
}

// isTerminal reports whether f is a terminal (not merely a character device such as /dev/null).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressBar draws one updating line on a terminal.
type progressBar struct {
	mu    sync.Mutex
	w     io.Writer
	last  time.Time
	drawn bool
}

func (p *progressBar) update(done float64, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.last) < 200*time.Millisecond && done < 1 {
		return
	}
	p.last = time.Now()
	if done < 0 {
		done = 0
	} else if done > 1 {
		done = 1
	}
	const width = 30
	n := int(done * width)
	fmt.Fprintf(p.w, "\r[%s%s] %3.0f%% %s ", strings.Repeat("#", n), strings.Repeat(".", width-n), done*100, detail)
	p.drawn = true
}

func (p *progressBar) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
