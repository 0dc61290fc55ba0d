// Package onedtest is a fake oned XML-RPC server for tests: it decodes method calls (string,
// int and boolean parameters), records them and answers what a handler decides, in oned's
// [success, result, error_code] form.
package onedtest

import (
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
)

// Call is one decoded method call.
type Call struct {
	Method string
	Params []any // string, int or bool
}

// String is parameter i as a string ("" if it is not one).
func (c Call) String(i int) string {
	if i < len(c.Params) {
		if s, ok := c.Params[i].(string); ok {
			return s
		}
	}
	return ""
}

// Int is parameter i as an int (-1 if it is not one).
func (c Call) Int(i int) int {
	if i < len(c.Params) {
		if n, ok := c.Params[i].(int); ok {
			return n
		}
	}
	return -1
}

// Reply is the answer to a call: a result (int or string) or a failure message.
type Reply struct {
	Result  any
	Failure string
	Code    int
	Fault   bool // answer with an XML-RPC fault instead of oned's failure array
}

// OK answers success with result.
func OK(result any) Reply { return Reply{Result: result} }

// Fail answers oned's failure form with msg.
func Fail(msg string) Reply { return Reply{Failure: msg, Code: 0x1000} }

// Server is the fake oned.
type Server struct {
	*httptest.Server
	handle func(Call) Reply

	mu    sync.Mutex
	calls []Call
}

// New starts a server on 127.0.0.1; its URL is Server.URL.
func New(handle func(Call) Reply) *Server {
	s := &Server{handle: handle}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Calls returns the calls received so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CallsTo returns the calls of one method.
func (s *Server) CallsTo(method string) []Call {
	var out []Call
	for _, c := range s.Calls() {
		if c.Method == method {
			out = append(out, c)
		}
	}
	return out
}

type xValue struct {
	String  *string `xml:"string"`
	Int     *string `xml:"int"`
	I4      *string `xml:"i4"`
	Boolean *string `xml:"boolean"`
	Text    string  `xml:",chardata"`
}

type xCall struct {
	Name   string `xml:"methodName"`
	Params []struct {
		Value xValue `xml:"value"`
	} `xml:"params>param"`
}

// Decode parses an XML-RPC methodCall body.
func Decode(body []byte) (Call, error) {
	var x xCall
	if err := xml.Unmarshal(body, &x); err != nil {
		return Call{}, err
	}
	c := Call{Method: x.Name}
	for _, p := range x.Params {
		v := p.Value
		switch {
		case v.String != nil:
			c.Params = append(c.Params, *v.String)
		case v.Int != nil || v.I4 != nil:
			s := v.Int
			if s == nil {
				s = v.I4
			}
			n, err := strconv.Atoi(strings.TrimSpace(*s))
			if err != nil {
				return c, err
			}
			c.Params = append(c.Params, n)
		case v.Boolean != nil:
			c.Params = append(c.Params, strings.TrimSpace(*v.Boolean) == "1")
		default:
			c.Params = append(c.Params, v.Text)
		}
	}
	return c, nil
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	c, err := Decode(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	rep := s.handle(c)
	w.Header().Set("Content-Type", "text/xml")
	io.WriteString(w, Encode(rep))
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

func value(v any) string {
	switch x := v.(type) {
	case int:
		return fmt.Sprintf("<value><i4>%d</i4></value>", x)
	case bool:
		if x {
			return "<value><boolean>1</boolean></value>"
		}
		return "<value><boolean>0</boolean></value>"
	default:
		return "<value><string>" + escape(fmt.Sprint(x)) + "</string></value>"
	}
}

// Encode renders a methodResponse as oned does.
func Encode(r Reply) string {
	if r.Fault {
		return `<?xml version="1.0"?><methodResponse><fault><value><struct>` +
			`<member><name>faultCode</name><value><int>` + strconv.Itoa(r.Code) + `</int></value></member>` +
			`<member><name>faultString</name><value><string>` + escape(r.Failure) + `</string></value></member>` +
			`</struct></value></fault></methodResponse>`
	}
	var vals []string
	if r.Failure != "" {
		vals = []string{value(false), value(r.Failure), value(r.Code)}
	} else {
		vals = []string{value(true), value(r.Result), value(0)}
	}
	return `<?xml version="1.0"?><methodResponse><params><param><value><array><data>` +
		strings.Join(vals, "") + `</data></array></value></param></params></methodResponse>`
}
