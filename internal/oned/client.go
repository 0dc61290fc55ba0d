// Package oned is a small client of oned's XML-RPC API: endpoint and credential discovery as
// OpenNebula's own clients do it, server-cipher impersonation (a login token for another user),
// and the few calls the drivers make.
package oned

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kolo/xmlrpc"

	"onebackup/internal/one"
)

// DefaultEndpoint is where oned listens when nothing else is configured.
const DefaultEndpoint = "http://localhost:2633/RPC2"

// maxResponse bounds an XML-RPC answer (pool listings can be large; single objects are small).
const maxResponse = 256 << 20

// Client calls oned. Every call gets a fresh session from Session, so that short-lived login
// tokens (impersonation) never expire in the middle of a long action.
type Client struct {
	Endpoint string
	// Session returns the session string sent as the first argument of every call.
	Session func() (string, error)
	// HTTP is the HTTP client (nil: one without a global timeout; calls are bounded by their
	// context).
	HTTP *http.Client
}

// Error is a failure reported by oned (success flag false) or an XML-RPC fault.
type Error struct {
	Method  string
	Message string
	Code    int // oned's error code (0 when unknown)
}

func (e *Error) Error() string {
	msg := strings.Join(strings.Fields(e.Message), " ")
	if msg == "" {
		msg = "no error message"
	}
	return fmt.Sprintf("%s failed: %s", e.Method, msg)
}

// home is the HOME of the process, "" when unset.
func home() string { return os.Getenv("HOME") }

// oneVarDir is <var>: $ONE_LOCATION/var or /var/lib/one.
func oneVarDir() string {
	if l := os.Getenv("ONE_LOCATION"); l != "" {
		return filepath.Join(l, "var")
	}
	return "/var/lib/one"
}

// firstFile returns the first existing regular file among paths ("" if none).
func firstFile(paths ...string) string {
	for _, p := range paths {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// Endpoint is oned's XML-RPC URL: $ONE_XMLRPC, else the first line of ~/.one/one_endpoint, else
// of /var/lib/one/.one/one_endpoint, else DefaultEndpoint.
func Endpoint() (string, error) {
	if e := strings.TrimSpace(os.Getenv("ONE_XMLRPC")); e != "" {
		return e, nil
	}
	var candidates []string
	if h := home(); h != "" {
		candidates = append(candidates, filepath.Join(h, ".one", "one_endpoint"))
	}
	candidates = append(candidates, "/var/lib/one/.one/one_endpoint")
	f := firstFile(candidates...)
	if f == "" {
		return DefaultEndpoint, nil
	}
	line, err := firstLine(f)
	if err != nil {
		return "", err
	}
	if line == "" {
		return "", fmt.Errorf("endpoint file %s is empty", f)
	}
	return line, nil
}

// AuthFile is the file holding "<user>:<password>": $ONE_AUTH, else ~/.one/one_auth, else
// /var/lib/one/.one/one_auth.
func AuthFile() (string, error) {
	if p := os.Getenv("ONE_AUTH"); p != "" {
		return p, nil
	}
	var candidates []string
	if h := home(); h != "" {
		candidates = append(candidates, filepath.Join(h, ".one", "one_auth"))
	}
	candidates = append(candidates, "/var/lib/one/.one/one_auth")
	if f := firstFile(candidates...); f != "" {
		return f, nil
	}
	return "", errors.New("no OpenNebula credentials: set ONE_AUTH or create ~/.one/one_auth")
}

// CipherAuthFile is the server credentials file used to impersonate users:
// $ONE_CIPHER_AUTH, else <var>/.one/onegate_auth.
func CipherAuthFile() string {
	if p := os.Getenv("ONE_CIPHER_AUTH"); p != "" {
		return p
	}
	return filepath.Join(oneVarDir(), ".one", "onegate_auth")
}

// firstLine reads a small credentials/config file and returns its first line, trimmed.
func firstLine(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(line), nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// credentials reads "<user>:<password>" from a file. The password is everything after the first
// colon (it may itself contain colons).
func credentials(path string) (user, password string, err error) {
	line, err := firstLine(path)
	if err != nil {
		return "", "", err
	}
	user, password, ok := strings.Cut(line, ":")
	if !ok || user == "" || password == "" {
		return "", "", fmt.Errorf("%s does not hold <user>:<password>", path)
	}
	return user, password, nil
}

// New is a client for the endpoint with the credentials of the auth file (ONE_AUTH…).
func New() (*Client, error) {
	ep, err := Endpoint()
	if err != nil {
		return nil, err
	}
	f, err := AuthFile()
	if err != nil {
		return nil, err
	}
	user, password, err := credentials(f)
	if err != nil {
		return nil, err
	}
	one.RegisterSecret(password)
	session := user + ":" + password
	return &Client{Endpoint: ep, Session: func() (string, error) { return session, nil }}, nil
}

// TokenTTL is how long an impersonation token is valid (as the reference's 120 s). A new token
// is made for every call.
const TokenTTL = 120 * time.Second

// Impersonate is a client acting as user target through the server credentials of
// CipherAuthFile (the way OpenNebula's servers act on behalf of a user).
func Impersonate(target string) (*Client, error) {
	if target == "" || strings.ContainsAny(target, ":\n\r") {
		return nil, fmt.Errorf("invalid user name %q to impersonate", target)
	}
	ep, err := Endpoint()
	if err != nil {
		return nil, err
	}
	srvUser, srvPassword, err := credentials(CipherAuthFile())
	if err != nil {
		return nil, fmt.Errorf("cannot impersonate %s: %v", target, err)
	}
	one.RegisterSecret(srvPassword)
	return &Client{Endpoint: ep, Session: func() (string, error) {
		return LoginToken(srvUser, srvPassword, target, time.Now().Add(TokenTTL))
	}}, nil
}

// Call runs method with the session prepended to args and returns oned's result value (the
// second element of its answer) after checking the success flag.
func (c *Client) Call(ctx context.Context, method string, args ...any) (any, error) {
	session, err := c.Session()
	if err != nil {
		return nil, err
	}
	body, err := xmlrpc.EncodeMethodCall(method, append([]any{session}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot encode the call: %v", method, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("invalid oned endpoint %q: %v", c.Endpoint, err)
	}
	req.Header.Set("Content-Type", "text/xml")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: no answer from oned at %s: %v", method, c.Endpoint, ctx.Err())
		}
		return nil, fmt.Errorf("%s: cannot reach oned at %s: %v", method, c.Endpoint, unwrapURLError(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("%s: reading oned's answer: %v", method, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("%s: oned at %s answered HTTP %s", method, c.Endpoint, resp.Status)
	}
	if len(data) > maxResponse {
		return nil, fmt.Errorf("%s: oned's answer is larger than %d MiB", method, maxResponse>>20)
	}
	r := xmlrpc.Response(data)
	if err := r.Err(); err != nil {
		var fe xmlrpc.FaultError
		if errors.As(err, &fe) {
			return nil, &Error{Method: method, Message: fe.String, Code: fe.Code}
		}
		return nil, fmt.Errorf("%s: invalid answer from oned: %v", method, err)
	}
	var out []any
	if err := r.Unmarshal(&out); err != nil {
		return nil, fmt.Errorf("%s: invalid answer from oned: %v", method, err)
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("%s: invalid answer from oned: %d values, want at least 2", method, len(out))
	}
	ok, isBool := out[0].(bool)
	if !isBool {
		return nil, fmt.Errorf("%s: invalid answer from oned: first value is %T, want a boolean", method, out[0])
	}
	if !ok {
		e := &Error{Method: method, Message: fmt.Sprint(out[1])}
		if len(out) > 2 {
			if n, isInt := asInt(out[2]); isInt {
				e.Code = n
			}
		}
		return nil, e
	}
	return out[1], nil
}

func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int64:
		return int(n), true
	case int:
		return n, true
	case int32:
		return int(n), true
	}
	return 0, false
}

// callID runs a call whose result is an object id.
func (c *Client) callID(ctx context.Context, method string, args ...any) (int, error) {
	v, err := c.Call(ctx, method, args...)
	if err != nil {
		return -1, err
	}
	id, ok := asInt(v)
	if !ok {
		return -1, fmt.Errorf("%s: oned returned %T %v, want an object id", method, v, v)
	}
	return id, nil
}

// DatastoreInfo is one.datastore.info(id, decrypt=true): the DATASTORE element with its
// encrypted attributes in clear.
func (c *Client) DatastoreInfo(ctx context.Context, id int) (*one.Datastore, error) {
	v, err := c.Call(ctx, "one.datastore.info", id, true)
	if err != nil {
		return nil, err
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("one.datastore.info: oned returned %T, want the datastore XML", v)
	}
	msg, err := one.ParseMessage([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("one.datastore.info: %v", err)
	}
	return msg.Datastore()
}

// ImageInfo is one.image.info(id, decrypt=false): the IMAGE element.
func (c *Client) ImageInfo(ctx context.Context, id int) (*one.Image, error) {
	v, err := c.Call(ctx, "one.image.info", id, false)
	if err != nil {
		return nil, err
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("one.image.info: oned returned %T, want the image XML", v)
	}
	msg, err := one.ParseMessage([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("one.image.info: %v", err)
	}
	return msg.Image()
}

// ImagePoolInfo is one.imagepool.info(-2, -1, -1): every image the user may see, as the
// IMAGE_POOL document.
func (c *Client) ImagePoolInfo(ctx context.Context) ([]byte, error) {
	v, err := c.Call(ctx, "one.imagepool.info", -2, -1, -1)
	if err != nil {
		return nil, err
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("one.imagepool.info: oned returned %T, want the image pool XML", v)
	}
	return []byte(s), nil
}

// ImageAllocate is one.image.allocate(template, dsID, no_check_capacity=false); it returns the
// new image's id.
func (c *Client) ImageAllocate(ctx context.Context, template string, dsID int) (int, error) {
	return c.callID(ctx, "one.image.allocate", template, dsID, false)
}

// TemplateAllocate is one.template.allocate(template); it returns the new template's id.
func (c *Client) TemplateAllocate(ctx context.Context, template string) (int, error) {
	return c.callID(ctx, "one.template.allocate", template)
}

// ImageDelete is one.image.delete(id, force=false) (OpenNebula 6.8+ signature): oned removes the
// image through its datastore driver.
func (c *Client) ImageDelete(ctx context.Context, id int) error {
	_, err := c.Call(ctx, "one.image.delete", id, false)
	return err
}
