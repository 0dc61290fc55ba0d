package validate

import "testing"

func TestID(t *testing.T) {
	for _, ok := range []string{"0", "42", "1234567890"} {
		if _, err := ID("id", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-1", "4 2", "42;", "..", "0x10", "12345678901", "４２"} {
		if _, err := ID("id", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestHost(t *testing.T) {
	for _, ok := range []string{"kvm1", "kvm-1.example.org", "10.0.0.1", "fe80::1", "a"} {
		if err := Host("host", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-oProxyCommand=x", "host;reboot", "a b", "host\n", "user@host", "-", "h/x", "h'"} {
		if err := Host("host", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestAbsPath(t *testing.T) {
	got, err := AbsPath("p", "/var/lib/one//datastores/./0/42")
	if err != nil || got != "/var/lib/one/datastores/0/42" {
		t.Errorf("got %q, %v", got, err)
	}
	for _, bad := range []string{"relative", "", "/a/../b", "/a/..", "/a\nb", "/a\x00b", "/a\x7fb"} {
		if _, err := AbsPath("p", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestUserAndToken(t *testing.T) {
	if User("u", "oneadmin") != nil || User("u", "-o") == nil || User("u", "a b") == nil {
		t.Error("User")
	}
	if Token("t", "one-42") != nil || Token("t", "../x") == nil || Token("t", "a;b") == nil || Token("t", "") == nil {
		t.Error("Token")
	}
	if !Within("/a/b/c", "/a/b") || Within("/a/bc", "/a/b") || Within("/a/b", "/a/b") {
		t.Error("Within")
	}
}
