package remote

import (
	"errors"
	"strings"
)

// Quote renders argv as one POSIX shell command line, the form ssh needs for the remote side.
// It is the only place in the project that produces shell text: every argument is wrapped in
// single quotes, and an embedded single quote becomes '\”. Arguments holding a NUL byte cannot
// be passed at all and are refused.
func Quote(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty command")
	}
	var b strings.Builder
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", errors.New("command argument contains a NUL byte")
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(a, "'", `'\''`))
		b.WriteByte('\'')
	}
	return b.String(), nil
}
