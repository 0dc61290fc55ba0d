package rsync

import (
	"strings"
	"testing"
)

// FuzzParseArgs: RSYNC_ARGS either is refused or splits into words none of which is an option
// that runs a program, reads or writes outside the backup, or deletes, nor the "--" after which
// rsync would take files and hosts.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{"-aS", "-aSz --bwlimit=1000", `--exclude='a b'`, "-e 'ssh -p 2'", "--rsync-path=/tmp/x", "-a -- /etc", `"--partial" '--inplace'`, "-aSe ssh"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := ParseArgs(s)
		if err != nil {
			return
		}
		for _, w := range words {
			if w == "--" {
				t.Fatalf("%q accepted with %q", s, w)
			}
			for _, bad := range []string{"--rsync-path", "--rsh", "--files-from", "--log-file", "--delete", "--remove-source-files"} {
				if strings.HasPrefix(w, bad) {
					t.Fatalf("%q accepted with %q", s, w)
				}
			}
		}
	})
}
