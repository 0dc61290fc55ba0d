package backend

import (
	"context"
	"fmt"

	"onebackup/internal/chain"
	"onebackup/internal/one"
	"onebackup/internal/validate"
)

// Flattener is a Store that can merge the oldest restore points of a chain into one full.
type Flattener interface {
	// Flatten stores the merge of merge (oldest first) as a new full restore point and deletes
	// the merged ones once it is stored. It returns the new id and its size in bytes.
	Flatten(ctx context.Context, loc Location, merge chain.Chain) (string, int64, error)
}

// IncrementFlatten is the increment_flatten action: with N restore points and KEEP_LAST K < N,
// the oldest N-K+1 become one full restore point and the answer is "<size_mb> <new chain>".
// N <= K answers nothing.
func IncrementFlatten(ctx context.Context, rt *Runtime, open Opener, msg *one.Message) (string, error) {
	k, err := validate.ID("EXTRA_DATA/KEEP_LAST", msg.Text("EXTRA_DATA/KEEP_LAST"))
	if err != nil {
		return "", err
	}
	if k < 1 {
		return "", fmt.Errorf("KEEP_LAST must be at least 1")
	}
	r, err := openImage(msg, rt, open)
	if err != nil {
		return "", err
	}
	n := len(r.chain)
	if n <= k {
		rt.Log.Infof("%d restore points, KEEP_LAST %d: nothing to flatten", n, k)
		return "", nil
	}
	f, ok := r.store.(Flattener)
	if !ok {
		return "", fmt.Errorf("the %s backend cannot flatten increments", r.store.Backend())
	}
	if r.loc.VMID < 0 {
		return "", fmt.Errorf("backup image has no VMS/ID: cannot tell which VM it belongs to")
	}
	merge := r.chain[:n-k+1]
	rt.Log.Infof("merging restore points %s of VM %d into one", merge, r.loc.VMID)
	snap, size, err := f.Flatten(ctx, r.loc, merge)
	if err != nil || rt.DryRun {
		return "", err
	}
	return fmt.Sprintf("%d %s", size>>20, r.chain.KeepLast(k, snap)), nil
}
