//go:build testhooks

package hostwire

import "os"

// TestEnv passes the end-to-end tests' hold phase on to the host program.
func TestEnv() map[string]string {
	env := map[string]string{}
	if v := os.Getenv(TestHoldEnv); v != "" {
		env[TestHoldEnv] = v
	}
	return env
}
