//go:build !testhooks

package hostjob

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"onebackup/internal/hostwire"
)

// A production build ignores the test hook's variable: the run goes on and leaves no marker.
func TestHoldIsInertInProductionBuilds(t *testing.T) {
	t.Setenv(hostwire.TestHoldEnv, "export")
	tmp := t.TempDir()
	start := time.Now()
	Hold(context.Background(), tmp, "export")
	if time.Since(start) > time.Second {
		t.Error("Hold paused a production build")
	}
	if _, err := os.Stat(filepath.Join(tmp, "hold.export")); err == nil {
		t.Error("Hold wrote its marker in a production build")
	}
}
