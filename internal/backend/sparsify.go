package backend

import (
	"context"
	"fmt"
	"strings"

	"onebackup/internal/one"
	"onebackup/internal/remote"
)

// ParseSparsify reads <MAD>_SPARSIFY (yes or no, default no).
func ParseSparsify(ds *one.Datastore, mad string) (bool, error) {
	attr := mad + "_SPARSIFY"
	switch strings.ToLower(ds.Attr(attr)) {
	case "", "no":
		return false, nil
	case "yes":
		return true, nil
	}
	return false, fmt.Errorf("invalid %s %q: expected yes or no", attr, ds.Attr(attr))
}

// Sparsify runs virt-sparsify in place on a merged image where it lies, as <MAD>_SPARSIFY asks:
// unused space of the guest's file systems and zeroed data are given back. It is an
// optimisation: when the tool is missing or fails, the merged image is kept as it is, with a
// warning naming the cause.
func (rt *Runtime) Sparsify(ctx context.Context, attr string, target remote.Target, image string) {
	_, err := rt.Run(ctx, remote.Cmd{Target: target, Argv: []string{"virt-sparsify", "-q", "--in-place", image}}, true)
	if err == nil {
		return
	}
	if ee, ok := err.(*remote.ExitError); ok && ee.Code == 127 || strings.Contains(err.Error(), "executable file not found") {
		rt.Log.Warnf("%s: virt-sparsify is not installed on %s (package guestfs-tools): keeping the merged image as it is", attr, target)
		return
	}
	rt.Log.Warnf("%s: virt-sparsify failed on %s, keeping the merged image as it is: %v", attr, target, err)
}
