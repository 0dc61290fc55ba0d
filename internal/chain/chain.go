// Package chain holds backup chains (the increments of a backup image) and the backup URLs
// built from them, with the exact semantics oned and existing backups rely on.
package chain

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Item is one restore point: increment id and the backend's snapshot id (SOURCE).
type Item struct {
	ID   int
	Snap string
}

// Chain is the ordered list of restore points of a backup image.
type Chain []Item

var (
	resticSnapRe = regexp.MustCompile(`^[0-9a-f]{8,64}$`)
	rsyncSnapRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
)

// CheckSnap validates a snapshot id for a backend: restic ids are hex (8 chars as stored by
// OpenNebula), rsync ids are directory names (6 hex chars for new backups).
func CheckSnap(backend, snap string) error {
	re := rsyncSnapRe
	if backend == "restic" {
		re = resticSnapRe
	}
	if !re.MatchString(snap) {
		return fmt.Errorf("invalid %s snapshot id %q", backend, snap)
	}
	return nil
}

// Validate checks every snapshot id of c for a backend.
func (c Chain) Validate(backend string) error {
	if len(c) == 0 {
		return fmt.Errorf("empty backup chain")
	}
	for _, it := range c {
		if err := CheckSnap(backend, it.Snap); err != nil {
			return err
		}
	}
	return nil
}

// Last is the newest restore point.
func (c Chain) Last() Item { return c[len(c)-1] }

// Find returns the item with increment id id.
func (c Chain) Find(id int) (Item, bool) {
	for _, it := range c {
		if it.ID == id {
			return it, true
		}
	}
	return Item{}, false
}

// Pick is the restore point a restore uses: the increment asked for, else the last one.
func (c Chain) Pick(id *int) Item {
	if id != nil {
		if it, ok := c.Find(*id); ok {
			return it
		}
	}
	return c.Last()
}

// UpTo is the items with id <= n.
func (c Chain) UpTo(n int) Chain {
	var out Chain
	for _, it := range c {
		if it.ID <= n {
			out = append(out, it)
		}
	}
	return out
}

// KeepLast is the last k items, the first of them with its snapshot replaced by newSnap
// (the result of merging every older increment into it).
func (c Chain) KeepLast(k int, newSnap string) Chain {
	if k <= 0 || k > len(c) {
		k = len(c)
	}
	out := append(Chain(nil), c[len(c)-k:]...)
	out[0].Snap = newSnap
	return out
}

// Snaps is every snapshot id in order.
func (c Chain) Snaps() []string {
	out := make([]string, len(c))
	for i, it := range c {
		out[i] = it.Snap
	}
	return out
}

// String renders "0:a,1:b".
func (c Chain) String() string {
	parts := make([]string, len(c))
	for i, it := range c {
		parts[i] = strconv.Itoa(it.ID) + ":" + it.Snap
	}
	return strings.Join(parts, ",")
}

// Parse reads "0:a,1:b"; items without "id:" are not accepted.
func Parse(s string) (Chain, error) {
	var c Chain
	for _, part := range strings.Split(s, ",") {
		id, snap, ok := strings.Cut(part, ":")
		n, err := strconv.Atoi(id)
		if !ok || err != nil || n < 0 || snap == "" || strings.TrimLeft(id, "0123456789") != "" {
			return nil, fmt.Errorf("invalid chain item %q: expected <increment_id>:<snapshot>", part)
		}
		// A chain is applied in the order written: an increment listed after a later one (or
		// twice) would rebuild a disk that never existed.
		if len(c) > 0 && n <= c[len(c)-1].ID {
			return nil, fmt.Errorf("invalid chain %q: increment %d follows increment %d", s, n, c[len(c)-1].ID)
		}
		c = append(c, Item{ID: n, Snap: snap})
	}
	return c, nil
}
