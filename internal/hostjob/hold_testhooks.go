//go:build testhooks

package hostjob

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"onebackup/internal/hostwire"
)

// Hold is a test hook: with ONEBACKUP_TEST_HOLD=<phase> the run stops at that phase (after
// writing <tmp dir>/hold.<phase>) until it is cancelled or <tmp dir>/release.<phase> appears,
// so that tests can act (SIGTERM, guest writes) at a precise point. It does nothing otherwise,
// and is compiled in only with -tags testhooks (the end-to-end tests build so).
func Hold(ctx context.Context, tmp, phase string) {
	if os.Getenv(hostwire.TestHoldEnv) != phase {
		return
	}
	os.WriteFile(filepath.Join(tmp, "hold."+phase), nil, 0o644)
	release := filepath.Join(tmp, "release."+phase)
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); {
		if _, err := os.Stat(release); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
