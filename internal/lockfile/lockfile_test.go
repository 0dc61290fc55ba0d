package lockfile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAcquireSerialisesAndLeavesNoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	release, err := Acquire(context.Background(), path, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time)
	go func() {
		second, err := Acquire(context.Background(), path, 0)
		if err != nil {
			t.Error(err)
		}
		got <- time.Now()
		second()
		close(got)
	}()
	time.Sleep(500 * time.Millisecond)
	released := time.Now()
	release()
	if at := <-got; at.Before(released) {
		t.Errorf("the second run locked the VM while the first held it")
	}
	<-got
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("lock file left behind: %v", err)
	}

	release, _ = Acquire(context.Background(), path, 0)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, path, 0); err == nil {
		t.Errorf("a cancelled wait for the lock succeeded")
	}
	if _, err := Acquire(context.Background(), path, 200*time.Millisecond); err != ErrTimeout {
		t.Errorf("a bounded wait for a held lock: %v, want ErrTimeout", err)
	}
}
