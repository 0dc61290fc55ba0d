//go:build !testhooks

package hostwire

// TestEnv is the environment the frontend hands to the host program besides the VM XML: none in
// a production build (see testenv_testhooks.go).
func TestEnv() map[string]string { return map[string]string{} }
