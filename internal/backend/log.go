package backend

import (
	"io"
	"strings"

	"github.com/sirupsen/logrus"

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

// NewLogger is the log of every frontend action: oned-style prefixed lines, secrets redacted.
func NewLogger(w io.Writer, verbose bool) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(w)
	l.SetFormatter(onedFormatter{})
	l.SetLevel(logrus.InfoLevel)
	if verbose {
		l.SetLevel(logrus.DebugLevel)
	}
	return l
}
