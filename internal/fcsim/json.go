package fcsim

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small JSON parser that keeps what serde_json reports in its
// errors: the line and column of each value, and serde_json's wording for
// syntax errors. Firecracker's fault messages embed those texts, so a
// generic encoding/json error would not do.

type jkind int

const (
	jNull jkind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

// pos is a serde_json position: column counts bytes on the line. Line 0
// means "no position" (serde's custom errors raised outside the parser).
type pos struct{ line, col int }

type member struct {
	key    string
	keyEnd pos // after the key's closing quote
	val    *jnode
}

type jnode struct {
	kind    jkind
	b       bool
	num     string // the number's text
	str     string
	items   []*jnode
	members []member
	start   pos // the value's first byte (serde's "peek" position)
	end     pos // after the value's last byte
	raw     []byte
}

// serdeError is a deserialization error in serde_json's words.
type serdeError struct {
	msg string
	at  pos
}

func (e *serdeError) Error() string {
	if e.at.line == 0 {
		return e.msg
	}
	return fmt.Sprintf("%s at line %d column %d", e.msg, e.at.line, e.at.col)
}

const maxDepth = 128 // serde_json's recursion limit

type jparser struct {
	data  []byte
	i     int
	line  int
	col   int // bytes consumed on the current line
	depth int
}

// parseJSON parses one JSON document the way serde_json::from_slice does.
func parseJSON(data []byte) (*jnode, error) {
	p := &jparser{data: data, line: 1}
	v, err := p.value()
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i < len(p.data) {
		return nil, p.peekErr("trailing characters")
	}
	return v, nil
}

func (p *jparser) consumed() pos { return pos{p.line, p.col} }
func (p *jparser) peekPos() pos  { return pos{p.line, p.col + 1} }

func (p *jparser) err(msg string) error     { return &serdeError{msg, p.consumed()} }
func (p *jparser) peekErr(msg string) error { return &serdeError{msg, p.peekPos()} }

func (p *jparser) next() byte {
	c := p.data[p.i]
	p.i++
	if c == '\n' {
		p.line++
		p.col = 0
	} else {
		p.col++
	}
	return c
}

func (p *jparser) ws() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\r', '\n':
			p.next()
		default:
			return
		}
	}
}

func (p *jparser) value() (*jnode, error) {
	p.ws()
	if p.i >= len(p.data) {
		return nil, p.err("EOF while parsing a value")
	}
	start, from := p.peekPos(), p.i
	var n *jnode
	var err error
	switch c := p.data[p.i]; {
	case c == 'n':
		err = p.ident("null")
		n = &jnode{kind: jNull}
	case c == 't':
		err = p.ident("true")
		n = &jnode{kind: jBool, b: true}
	case c == 'f':
		err = p.ident("false")
		n = &jnode{kind: jBool}
	case c == '-' || c >= '0' && c <= '9':
		var s string
		s, err = p.number()
		n = &jnode{kind: jNumber, num: s}
	case c == '"':
		p.next()
		var s string
		s, err = p.str()
		n = &jnode{kind: jString, str: s}
	case c == '[':
		n, err = p.array()
	case c == '{':
		n, err = p.object()
	default:
		return nil, p.peekErr("expected value")
	}
	if err != nil {
		return nil, err
	}
	n.start, n.end, n.raw = start, p.consumed(), p.data[from:p.i]
	return n, nil
}

func (p *jparser) ident(word string) error {
	for k := 0; k < len(word); k++ {
		if p.i >= len(p.data) {
			return p.err("EOF while parsing a value")
		}
		if p.data[p.i] != word[k] {
			p.next()
			return p.err("expected ident")
		}
		p.next()
	}
	return nil
}

func (p *jparser) digit() bool { return p.i < len(p.data) && p.data[p.i] >= '0' && p.data[p.i] <= '9' }

func (p *jparser) number() (string, error) {
	from := p.i
	if p.data[p.i] == '-' {
		p.next()
	}
	if !p.digit() {
		if p.i >= len(p.data) {
			return "", p.err("EOF while parsing a value")
		}
		return "", p.peekErr("invalid number")
	}
	if p.next() == '0' && p.digit() {
		return "", p.peekErr("invalid number")
	}
	for p.digit() {
		p.next()
	}
	if p.i < len(p.data) && p.data[p.i] == '.' {
		p.next()
		if !p.digit() {
			if p.i >= len(p.data) {
				return "", p.err("EOF while parsing a value")
			}
			return "", p.peekErr("invalid number")
		}
		for p.digit() {
			p.next()
		}
	}
	if p.i < len(p.data) && (p.data[p.i] == 'e' || p.data[p.i] == 'E') {
		p.next()
		if p.i < len(p.data) && (p.data[p.i] == '+' || p.data[p.i] == '-') {
			p.next()
		}
		if !p.digit() {
			if p.i >= len(p.data) {
				return "", p.err("EOF while parsing a value")
			}
			return "", p.peekErr("invalid number")
		}
		for p.digit() {
			p.next()
		}
	}
	return string(p.data[from:p.i]), nil
}

// str parses a string after its opening quote.
func (p *jparser) str() (string, error) {
	var sb strings.Builder
	for {
		if p.i >= len(p.data) {
			return "", p.err("EOF while parsing a string")
		}
		c := p.next()
		switch {
		case c == '"':
			return sb.String(), nil
		case c == '\\':
			if p.i >= len(p.data) {
				return "", p.err("EOF while parsing a string")
			}
			e := p.next()
			switch e {
			case '"', '\\', '/':
				sb.WriteByte(e)
			case 'b':
				sb.WriteByte('\b')
			case 'f':
				sb.WriteByte('\f')
			case 'n':
				sb.WriteByte('\n')
			case 'r':
				sb.WriteByte('\r')
			case 't':
				sb.WriteByte('\t')
			case 'u':
				r, err := p.hex4()
				if err != nil {
					return "", err
				}
				if utf16.IsSurrogate(r) {
					if p.i+1 < len(p.data) && p.data[p.i] == '\\' && p.data[p.i+1] == 'u' {
						p.next()
						p.next()
						r2, err := p.hex4()
						if err != nil {
							return "", err
						}
						r = utf16.DecodeRune(r, r2)
					} else {
						r = utf8.RuneError
					}
				}
				sb.WriteRune(r)
			default:
				return "", p.err("invalid escape")
			}
		case c < 0x20:
			return "", p.err(`control character (\u0000-\u001F) found while parsing a string`)
		default:
			sb.WriteByte(c)
		}
	}
}

func (p *jparser) hex4() (rune, error) {
	var r rune
	for k := 0; k < 4; k++ {
		if p.i >= len(p.data) {
			return 0, p.err("EOF while parsing a string")
		}
		c := p.next()
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, p.err("invalid escape")
		}
		r = r<<4 | rune(d)
	}
	return r, nil
}

func (p *jparser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.err("recursion limit exceeded")
	}
	return nil
}

func (p *jparser) array() (*jnode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	p.next() // '['
	n := &jnode{kind: jArray}
	p.ws()
	if p.i < len(p.data) && p.data[p.i] == ']' {
		p.next()
		return n, nil
	}
	for {
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		n.items = append(n.items, v)
		p.ws()
		if p.i >= len(p.data) {
			return nil, p.err("EOF while parsing a list")
		}
		switch p.data[p.i] {
		case ']':
			p.next()
			return n, nil
		case ',':
			p.next()
			p.ws()
			if p.i < len(p.data) && p.data[p.i] == ']' {
				return nil, p.peekErr("trailing comma")
			}
		default:
			return nil, p.peekErr("expected `,` or `]`")
		}
	}
}

func (p *jparser) object() (*jnode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer func() { p.depth-- }()
	p.next() // '{'
	n := &jnode{kind: jObject}
	p.ws()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.next()
		return n, nil
	}
	for {
		p.ws()
		if p.i >= len(p.data) {
			return nil, p.err("EOF while parsing an object")
		}
		if p.data[p.i] != '"' {
			return nil, p.peekErr("key must be a string")
		}
		p.next()
		key, err := p.str()
		if err != nil {
			return nil, err
		}
		keyEnd := p.consumed()
		p.ws()
		if p.i >= len(p.data) {
			return nil, p.err("EOF while parsing an object")
		}
		if p.data[p.i] != ':' {
			return nil, p.peekErr("expected `:`")
		}
		p.next()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		n.members = append(n.members, member{key: key, keyEnd: keyEnd, val: v})
		p.ws()
		if p.i >= len(p.data) {
			return nil, p.err("EOF while parsing an object")
		}
		switch p.data[p.i] {
		case '}':
			p.next()
			return n, nil
		case ',':
			p.next()
			p.ws()
			if p.i < len(p.data) && p.data[p.i] == '}' {
				return nil, p.peekErr("trailing comma")
			}
		default:
			return nil, p.peekErr("expected `,` or `}`")
		}
	}
}

// nodeBytes is the JSON text of n.
func nodeBytes(n *jnode) []byte { return n.raw }

// unmarshalNode decodes an already validated node into v.
func unmarshalNode(n *jnode, v any) { _ = json.Unmarshal(n.raw, v) }

// get returns the member value named key of an object node, or nil.
func (n *jnode) get(key string) *jnode {
	if n == nil || n.kind != jObject {
		return nil
	}
	for _, m := range n.members {
		if m.key == key {
			return m.val
		}
	}
	return nil
}

// unexpected describes a value the way serde's Unexpected does.
func (n *jnode) unexpected() string {
	switch n.kind {
	case jNull:
		return "null"
	case jBool:
		return "boolean `" + strconv.FormatBool(n.b) + "`"
	case jString:
		return "string " + rustDebugString(n.str)
	case jArray:
		return "sequence"
	case jObject:
		return "map"
	}
	if isInteger(n.num) {
		if _, err := strconv.ParseUint(n.num, 10, 64); err == nil {
			return "integer `" + n.num + "`"
		}
		if _, err := strconv.ParseInt(n.num, 10, 64); err == nil {
			return "integer `" + n.num + "`"
		}
	}
	f, _ := strconv.ParseFloat(n.num, 64)
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".eEIN") {
		s += ".0"
	}
	return "floating point `" + s + "`"
}

func isInteger(s string) bool { return !strings.ContainsAny(s, ".eE") }

// rustDebugString quotes s like Rust's {:?} for str, which firecracker uses
// in its log lines and serde uses in its messages.
func rustDebugString(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			sb.WriteString(`\"`)
		case '\\':
			sb.WriteString(`\\`)
		case '\n':
			sb.WriteString(`\n`)
		case '\r':
			sb.WriteString(`\r`)
		case '\t':
			sb.WriteString(`\t`)
		case 0:
			sb.WriteString(`\0`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&sb, `\u{%x}`, r)
			} else {
				sb.WriteRune(r)
			}
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
