// Package one is the oned side of the protocol: it decodes what oned sends a driver (argv, raw or
// base64 XML on stdin, datastore.conf) into typed views and formats what a driver answers.
package one

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/beevik/etree"
)

// maxMessage bounds what is read from stdin: oned's messages are a few hundred KiB at most.
const maxMessage = 64 << 20

// Message is a decoded driver message. Children are looked up by element name, never by position,
// because oned's callers order them differently.
type Message struct {
	root *etree.Element
	raw  []byte
}

// ReadMessage reads one message: raw XML, or the base64 of it (oned's DS MAD sends base64, the
// VMM and TM paths send raw XML; accepting both lets an operator feed either by hand).
func ReadMessage(r io.Reader) (*Message, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxMessage+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read the driver message: %w", err)
	}
	if len(data) > maxMessage {
		return nil, errors.New("driver message is larger than 64 MiB")
	}
	return ParseMessage(data)
}

// ParseMessage decodes raw or base64 XML.
func ParseMessage(data []byte) (*Message, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, errors.New("empty driver message: expected the action XML (raw or base64) on stdin")
	}
	if data[0] != '<' {
		compact := strings.Join(strings.Fields(string(data)), "")
		dec, err := base64.StdEncoding.DecodeString(compact)
		if err != nil {
			return nil, errors.New("driver message is neither XML nor valid base64")
		}
		data = bytes.TrimSpace(dec)
	}
	doc := etree.NewDocument()
	doc.ReadSettings.Permissive = false
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, fmt.Errorf("driver message is not valid XML: %s", OneLine(err.Error()))
	}
	root := doc.Root()
	if root == nil {
		return nil, errors.New("driver message has no XML root element")
	}
	return &Message{root: root, raw: data}, nil
}

// Raw is the message's XML as received (base64 decoded).
func (m *Message) Raw() []byte { return m.raw }

// element finds the child named name, or the root itself when it has that name
// (backup_cancel receives a bare <VM>).
func (m *Message) element(name string) *etree.Element {
	if m.root.Tag == name {
		return m.root
	}
	return m.root.SelectElement(name)
}

// Datastore is the DATASTORE element of the message.
func (m *Message) Datastore() (*Datastore, error) {
	e := m.element("DATASTORE")
	if e == nil {
		return nil, errors.New("driver message has no DATASTORE element")
	}
	return &Datastore{node{e}}, nil
}

// VM is the VM element of the message.
func (m *Message) VM() (*VM, error) {
	e := m.element("VM")
	if e == nil {
		return nil, errors.New("driver message has no VM element")
	}
	return &VM{node{e}}, nil
}

// Image is the IMAGE element of the message.
func (m *Message) Image() (*Image, error) {
	e := m.element("IMAGE")
	if e == nil {
		return nil, errors.New("driver message has no IMAGE element")
	}
	return &Image{node{e}}, nil
}

// Text returns the trimmed text at a slash-separated path below the root ("" when absent).
func (m *Message) Text(path string) string { return node{m.root}.text(path) }

// node wraps an element with name-based, order-free lookups.
type node struct{ e *etree.Element }

func (n node) text(path string) string {
	e := n.e.FindElement("./" + path)
	if e == nil {
		return ""
	}
	return strings.TrimSpace(e.Text())
}

func (n node) texts(path string) []string {
	var out []string
	for _, e := range n.e.FindElements("./" + path) {
		out = append(out, strings.TrimSpace(e.Text()))
	}
	return out
}

// OneLine joins a possibly multi-line text into one line, for messages that must stay one line.
func OneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
