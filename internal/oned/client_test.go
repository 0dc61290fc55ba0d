package oned

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"onebackup/internal/oned/onedtest"
)

func staticClient(url string) *Client {
	return &Client{Endpoint: url, Session: func() (string, error) { return "oneadmin:pw", nil }}
}

func TestCalls(t *testing.T) {
	srv := onedtest.New(func(c onedtest.Call) onedtest.Reply {
		switch c.Method {
		case "one.image.allocate":
			return onedtest.OK(210)
		case "one.template.allocate":
			return onedtest.OK(57)
		case "one.image.delete":
			return onedtest.OK(c.Int(1))
		case "one.datastore.info":
			return onedtest.OK(`<DATASTORE><ID>100</ID><TEMPLATE><RESTIC_PASSWORD><![CDATA[s3cret]]></RESTIC_PASSWORD></TEMPLATE></DATASTORE>`)
		}
		return onedtest.Fail("unknown method")
	})
	defer srv.Close()
	c := staticClient(srv.URL)
	ctx := context.Background()

	tmpl := "NAME = \"a\\\"b <&>\"\nTYPE = \"OS\""
	id, err := c.ImageAllocate(ctx, tmpl, 1)
	if err != nil || id != 210 {
		t.Fatalf("ImageAllocate = %d, %v", id, err)
	}
	if id, err := c.TemplateAllocate(ctx, "NAME=x"); err != nil || id != 57 {
		t.Fatalf("TemplateAllocate = %d, %v", id, err)
	}
	if err := c.ImageDelete(ctx, 210); err != nil {
		t.Fatal(err)
	}
	ds, err := c.DatastoreInfo(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := ds.ID(); id != 100 || ds.RawAttr("RESTIC_PASSWORD") != "s3cret" {
		t.Fatalf("DatastoreInfo: id %d, password %q", id, ds.RawAttr("RESTIC_PASSWORD"))
	}

	calls := srv.Calls()
	want := []struct {
		method string
		params []any
	}{
		{"one.image.allocate", []any{"oneadmin:pw", tmpl, 1, false}},
		{"one.template.allocate", []any{"oneadmin:pw", "NAME=x"}},
		{"one.image.delete", []any{"oneadmin:pw", 210, false}},
		{"one.datastore.info", []any{"oneadmin:pw", 100, true}},
	}
	if len(calls) != len(want) {
		t.Fatalf("calls %+v", calls)
	}
	for i, w := range want {
		if calls[i].Method != w.method || len(calls[i].Params) != len(w.params) {
			t.Fatalf("call %d = %+v, want %s%v", i, calls[i], w.method, w.params)
		}
		for j := range w.params {
			if calls[i].Params[j] != w.params[j] {
				t.Errorf("call %d param %d = %#v, want %#v", i, j, calls[i].Params[j], w.params[j])
			}
		}
	}
}

func TestFailures(t *testing.T) {
	srv := onedtest.New(func(c onedtest.Call) onedtest.Reply {
		if c.Method == "one.template.allocate" {
			return onedtest.Reply{Failure: "bad method", Code: 1, Fault: true}
		}
		return onedtest.Fail("[one.image.allocate] Not enough\n capacity.")
	})
	defer srv.Close()
	c := staticClient(srv.URL)
	_, err := c.ImageAllocate(context.Background(), "NAME=x", 1)
	var oe *Error
	if !errors.As(err, &oe) || oe.Code != 0x1000 {
		t.Fatalf("error %v (%T), want an *Error with code", err, err)
	}
	if err.Error() != "one.image.allocate failed: [one.image.allocate] Not enough capacity." {
		t.Errorf("error text %q", err.Error())
	}
	if _, err := c.TemplateAllocate(context.Background(), "x"); !errors.As(err, &oe) || !strings.Contains(err.Error(), "bad method") {
		t.Errorf("fault: %v", err)
	}

	// Unreachable endpoint, HTTP errors, garbage answers.
	if _, err := staticClient("http://127.0.0.1:1/RPC2").TemplateAllocate(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "cannot reach oned") {
		t.Errorf("unreachable: %v", err)
	}
	bad := httptest.NewServer(http.NotFoundHandler())
	defer bad.Close()
	if _, err := staticClient(bad.URL).TemplateAllocate(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("404: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := staticClient(bad.URL).TemplateAllocate(ctx, "x"); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("cancelled: %v", err)
	}
}

func TestLoginToken(t *testing.T) {
	exp := time.Unix(1800000000, 0)
	tok, err := LoginToken("serveradmin", "p:ss w0rd", "alice", exp)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, "serveradmin:alice:") || strings.ContainsAny(tok, "\n ") {
		t.Fatalf("token %q", tok)
	}
	got, err := ParseLoginToken(tok, "p:ss w0rd")
	if err != nil || got.ServerUser != "serveradmin" || got.Target != "alice" || !got.Expire.Equal(exp) {
		t.Fatalf("ParseLoginToken = %+v, %v", got, err)
	}
	if _, err := ParseLoginToken(tok, "other"); err == nil {
		t.Errorf("token decrypted with the wrong password")
	}

	// Cross-check with OpenSSL (what the reference uses): same key, IV and padding.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl")
	}
	key, iv := cipherKey("p:ss w0rd")
	cmd := exec.Command("openssl", "enc", "-aes-256-cbc", "-K", hex.EncodeToString(key), "-iv", hex.EncodeToString(iv), "-A", "-base64")
	cmd.Stdin = strings.NewReader("serveradmin:alice:1800000000")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "serveradmin:alice:" + strings.TrimSpace(string(out)); tok != want {
		t.Errorf("token %q, openssl gives %q", tok, want)
	}
	if len(key) != 32 || string(iv) != string(key[:16]) {
		t.Errorf("key %q iv %q", key, iv)
	}
	if _, err := base64.StdEncoding.DecodeString(strings.SplitN(tok, ":", 3)[2]); err != nil {
		t.Error(err)
	}
}

func TestDiscovery(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("ONE_XMLRPC", "")
	t.Setenv("ONE_AUTH", "")
	t.Setenv("ONE_CIPHER_AUTH", "")
	t.Setenv("ONE_LOCATION", "")

	if _, err := os.Stat("/var/lib/one/.one/one_endpoint"); err != nil {
		if ep, err := Endpoint(); err != nil || ep != DefaultEndpoint {
			t.Errorf("default endpoint = %q, %v", ep, err)
		}
	}
	os.MkdirAll(filepath.Join(dir, ".one"), 0o700)
	os.WriteFile(filepath.Join(dir, ".one", "one_endpoint"), []byte("http://fe:2633/RPC2\n"), 0o600)
	if ep, _ := Endpoint(); ep != "http://fe:2633/RPC2" {
		t.Errorf("endpoint from ~/.one = %q", ep)
	}
	t.Setenv("ONE_XMLRPC", "http://env:2633/RPC2")
	if ep, _ := Endpoint(); ep != "http://env:2633/RPC2" {
		t.Errorf("endpoint from ONE_XMLRPC = %q", ep)
	}

	os.WriteFile(filepath.Join(dir, ".one", "one_auth"), []byte("oneadmin:a:b\n"), 0o600)
	c, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := c.Session(); s != "oneadmin:a:b" {
		t.Errorf("session %q", s)
	}
	auth := filepath.Join(dir, "auth")
	os.WriteFile(auth, []byte("bob:pw"), 0o600)
	t.Setenv("ONE_AUTH", auth)
	if f, _ := AuthFile(); f != auth {
		t.Errorf("auth file %q", f)
	}

	if f := CipherAuthFile(); f != "/var/lib/one/.one/onegate_auth" {
		t.Errorf("cipher auth file %q", f)
	}
	t.Setenv("ONE_LOCATION", "/opt/one")
	if f := CipherAuthFile(); f != "/opt/one/var/.one/onegate_auth" {
		t.Errorf("cipher auth file with ONE_LOCATION %q", f)
	}
	ga := filepath.Join(dir, "onegate_auth")
	os.WriteFile(ga, []byte("serveradmin:srvpw\n"), 0o600)
	t.Setenv("ONE_CIPHER_AUTH", ga)
	ic, err := Impersonate("alice")
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := ic.Session()
	tok, err := ParseLoginToken(s1, "srvpw")
	if err != nil || tok.Target != "alice" {
		t.Fatalf("impersonation session %q: %+v %v", s1, tok, err)
	}
	if d := time.Until(tok.Expire); d < 100*time.Second || d > 125*time.Second {
		t.Errorf("token expires in %v, want ~120s", d)
	}
	if _, err := Impersonate("a:b"); err == nil {
		t.Errorf("user name with a colon accepted")
	}
	os.WriteFile(ga, []byte("nopassword\n"), 0o600)
	if _, err := Impersonate("alice"); err == nil || !strings.Contains(err.Error(), "<user>:<password>") {
		t.Errorf("malformed onegate_auth: %v", err)
	}
	t.Setenv("ONE_CIPHER_AUTH", filepath.Join(dir, "missing"))
	if _, err := Impersonate("alice"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing onegate_auth: %v", err)
	}
}
