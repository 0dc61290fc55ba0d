//go:build !testhooks

package hostjob

import "context"

// Hold marks a point of a run where the end-to-end tests pause it to act at a precise moment
// (cancel it, write into the guest). Only binaries built with -tags testhooks can pause there
// (hold_testhooks.go); in a production build it is empty, so no environment can stall a backup.
func Hold(ctx context.Context, tmp, phase string) {}
