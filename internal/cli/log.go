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

	"onebackup/internal/backend"
)

func newLogger(w io.Writer, verbose bool) *logrus.Logger { return backend.NewLogger(w, verbose) }

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
