package chain

import (
	"strings"
	"testing"
)

// FuzzParseURL: any string either is refused or parses into a URL that prints back to a string
// parsing to the same URL, whose path is absolute and free of "..", and whose chain is ordered.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"restic://100//0:0123abcd/var/lib/one/datastores/0/5/backup/disk.0.0",
		"rsync://200/7/0:0a1b2c,1:3d4e5f/var/lib/one/datastores/200/5/3d4e5f/disk.1.1",
		"restic+rbd://128//0:aa,1:bb,2:cc/var/lib/one/datastores/0/62/backup/disk.0.2.rbdiff",
		"restic://126//0:0123abcd;touch /tmp/x/var/lib/one/datastores/0/57/backup/disk.0.0",
		"rsync://1//0:a/../../etc/shadow",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURL(s)
		if err != nil {
			return
		}
		if !strings.HasPrefix(u.Path, "/") || strings.Contains(u.Path, "/../") || strings.HasSuffix(u.Path, "/..") {
			t.Fatalf("%q parsed to path %q", s, u.Path)
		}
		for i := 1; i < len(u.Chain); i++ {
			if u.Chain[i].ID <= u.Chain[i-1].ID {
				t.Fatalf("%q parsed to an unordered chain %v", s, u.Chain)
			}
		}
		again, err := ParseURL(u.String())
		if err != nil || again.String() != u.String() {
			t.Fatalf("%q → %q does not parse back (%v)", s, u.String(), err)
		}
	})
}
