package hostjob

import (
	"cmp"
	"slices"
	"sync"
)

// Registry holds the sides of one axis built into the binary (each side's package registers a
// constructor from its init), keyed by the matrix's name of the side.
type Registry[K cmp.Ordered, V any] struct {
	mu  sync.Mutex
	all map[K]func() V
}

// Register adds a side.
func (r *Registry[K, V]) Register(name K, f func() V) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.all == nil {
		r.all = map[K]func() V{}
	}
	r.all[name] = f
}

// Names lists the registered sides, sorted.
func (r *Registry[K, V]) Names() []K {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]K, 0, len(r.all))
	for n := range r.all {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// New makes the side registered under name; false when it is not built in.
func (r *Registry[K, V]) New(name K) (V, bool) {
	r.mu.Lock()
	f, ok := r.all[name]
	r.mu.Unlock()
	if !ok {
		var zero V
		return zero, false
	}
	return f(), true
}
