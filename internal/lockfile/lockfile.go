// Package lockfile serialises processes with an flock on a file that exists only while it is
// held: release removes it, and a waiter that locked a file removed meanwhile locks the new one.
package lockfile

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// ErrTimeout is returned when the lock stayed held for the whole wait.
var ErrTimeout = errors.New("lock held by another process")

// Acquire takes the lock at path, waiting up to wait (0: until ctx ends), and returns its release.
func Acquire(ctx context.Context, path string, wait time.Duration) (func(), error) {
	var deadline time.Time
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			if sameFile(f, path) {
				return func() { os.Remove(path); f.Close() }, nil
			}
			f.Close() // the holder before us removed it: lock the current file
			continue
		}
		f.Close()
		if !deadline.IsZero() && time.Now().After(deadline) {
			return nil, ErrTimeout
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sameFile tells whether the open file f is still the one at path.
func sameFile(f *os.File, path string) bool {
	open, err1 := f.Stat()
	now, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && os.SameFile(open, now)
}
