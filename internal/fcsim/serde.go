package fcsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file is serde_json's Deserializer (1.0.149, SliceRead) driven by a
// schema that stands for the serde-derived Deserialize impls of
// firecracker's request types. It is one pass over the bytes, as serde's
// is, so that the first error firecracker reports is the first error we
// report, with serde_json's wording and its line and column:
//
//   - a semantic error early in a body wins over a syntax error later in it;
//   - "custom" errors (missing field, unknown field, invalid length, a bad
//     MAC address) carry no position when raised and get the position of
//     the place where serde_json fixes it (fix below), which for a struct
//     is after its closing brace was consumed;
//   - a struct accepts a JSON array of its fields in declaration order, as
//     every serde-derived struct does.
//
// The result is a normalized value tree (nil, bool, string, jnum, []any,
// map[string]any) in which every struct is an object, ready to be turned
// into an internal/firecracker model with encoding/json.

// pos is a serde_json position: column counts bytes consumed on the line.
// Line 0 means "no position" (custom errors raised outside the parser).
type pos struct{ line, col int }

// serdeError is a deserialization error in serde_json's words. fixed is
// false for a custom error that has not been given its position yet.
type serdeError struct {
	msg   string
	at    pos
	fixed bool
}

func (e *serdeError) Error() string {
	if e.at.line == 0 {
		return e.msg
	}
	return fmt.Sprintf("%s at line %d column %d", e.msg, e.at.line, e.at.col)
}

// customErr is serde::de::Error::custom: positioned later, by fix.
func customErr(format string, args ...any) *serdeError {
	return &serdeError{msg: fmt.Sprintf(format, args...)}
}

// jnum is a JSON number as serde_json parses it: u64, i64 or f64.
type jnum struct {
	kind byte // 'u', 'i' or 'f'
	u    uint64
	i    int64
	f    float64
}

// MarshalJSON writes the number the way serde_json would.
func (n jnum) MarshalJSON() ([]byte, error) { return []byte(n.String()), nil }

func (n jnum) String() string {
	switch n.kind {
	case 'u':
		return strconv.FormatUint(n.u, 10)
	case 'i':
		return strconv.FormatInt(n.i, 10)
	}
	return formatFloat(n.f)
}

// unexpected is serde's Unexpected for the number, as serde_json prints it.
func (n jnum) unexpected() string {
	if n.kind == 'f' {
		return "floating point `" + formatFloat(n.f) + "`"
	}
	return "integer `" + n.String() + "`"
}

// sdec is the deserializer state.
type sdec struct {
	data      []byte
	i         int // next byte to read
	remaining int // serde_json's remaining_depth
}

const serdeRecursionLimit = 128

func newSdec(data []byte) *sdec { return &sdec{data: data, remaining: serdeRecursionLimit} }

func (d *sdec) posOf(i int) pos {
	start := bytes.LastIndexByte(d.data[:i], '\n') + 1
	return pos{1 + bytes.Count(d.data[:start], []byte{'\n'}), i - start}
}

// position is where the last consumed byte is; peekPosition where the
// next one is (serde_json's error and peek_error).
func (d *sdec) position() pos     { return d.posOf(d.i) }
func (d *sdec) peekPosition() pos { return d.posOf(min(len(d.data), d.i+1)) }

func (d *sdec) err(msg string) *serdeError     { return &serdeError{msg, d.position(), true} }
func (d *sdec) peekErr(msg string) *serdeError { return &serdeError{msg, d.peekPosition(), true} }

// fix gives a custom error the current position (serde_json's fix_position).
func (d *sdec) fix(e *serdeError) *serdeError {
	if !e.fixed {
		e.at, e.fixed = d.position(), true
	}
	return e
}

// ws skips whitespace and peeks at the next byte.
func (d *sdec) ws() (byte, bool) {
	for d.i < len(d.data) {
		switch c := d.data[d.i]; c {
		case ' ', '\n', '\t', '\r':
			d.i++
		default:
			return c, true
		}
	}
	return 0, false
}

func (d *sdec) peekOrNull() byte {
	if d.i < len(d.data) {
		return d.data[d.i]
	}
	return 0
}

func (d *sdec) parseIdent(rest string) *serdeError {
	for k := 0; k < len(rest); k++ {
		if d.i >= len(d.data) {
			return d.err("EOF while parsing a value")
		}
		c := d.data[d.i]
		d.i++
		if c != rest[k] {
			return d.err("expected ident")
		}
	}
	return nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// parseInteger is serde_json's parse_integer (after an optional '-').
func (d *sdec) parseInteger(positive bool) (jnum, *serdeError) {
	from := d.i
	if !positive {
		from--
	}
	if d.i >= len(d.data) {
		return jnum{}, d.err("EOF while parsing a value")
	}
	c := d.data[d.i]
	d.i++
	var sig uint64
	switch {
	case c == '0':
		if isDigit(d.peekOrNull()) {
			return jnum{}, d.peekErr("invalid number")
		}
	case c >= '1' && c <= '9':
		sig = uint64(c - '0')
		for isDigit(d.peekOrNull()) {
			digit := uint64(d.peekOrNull() - '0')
			if sig >= math.MaxUint64/10 && (sig > math.MaxUint64/10 || digit > math.MaxUint64%10) {
				// Too long for u64: serde_json reads a float.
				for isDigit(d.peekOrNull()) {
					d.i++
				}
				return d.parseFloatTail(from)
			}
			d.i++
			sig = sig*10 + digit
		}
	default:
		return jnum{}, d.err("invalid number")
	}
	switch d.peekOrNull() {
	case '.', 'e', 'E':
		return d.parseFloatTail(from)
	}
	if positive {
		return jnum{kind: 'u', u: sig}, nil
	}
	// -0 and values below i64::MIN become floats, as in serde_json.
	if neg := -int64(sig); neg < 0 {
		return jnum{kind: 'i', i: neg}, nil
	}
	return jnum{kind: 'f', f: -float64(sig)}, nil
}

// parseFloatTail reads the fraction and exponent of a number that started
// at from, with serde_json's errors for a malformed tail.
func (d *sdec) parseFloatTail(from int) (jnum, *serdeError) {
	if d.peekOrNull() == '.' {
		d.i++
		if !isDigit(d.peekOrNull()) {
			if d.i < len(d.data) {
				return jnum{}, d.peekErr("invalid number")
			}
			return jnum{}, d.peekErr("EOF while parsing a value")
		}
		for isDigit(d.peekOrNull()) {
			d.i++
		}
	}
	if c := d.peekOrNull(); c == 'e' || c == 'E' {
		d.i++
		if c := d.peekOrNull(); c == '+' || c == '-' {
			d.i++
		}
		if d.i >= len(d.data) {
			return jnum{}, d.err("EOF while parsing a value")
		}
		c := d.data[d.i]
		d.i++
		if !isDigit(c) {
			return jnum{}, d.err("invalid number")
		}
		for isDigit(d.peekOrNull()) {
			d.i++
		}
	}
	f, err := strconv.ParseFloat(string(d.data[from:d.i]), 64)
	if err != nil && math.IsInf(f, 0) {
		return jnum{}, d.err("number out of range")
	}
	return jnum{kind: 'f', f: f}, nil
}

// parseStr reads a string whose opening quote was consumed.
func (d *sdec) parseStr() (string, *serdeError) {
	var buf []byte
	start := d.i
	for {
		for d.i < len(d.data) {
			c := d.data[d.i]
			if c == '"' || c == '\\' || c < 0x20 {
				break
			}
			d.i++
		}
		if d.i == len(d.data) {
			return "", d.err("EOF while parsing a string")
		}
		switch d.data[d.i] {
		case '"':
			buf = append(buf, d.data[start:d.i]...)
			d.i++
			if !utf8.Valid(buf) {
				return "", d.err("invalid unicode code point")
			}
			return string(buf), nil
		case '\\':
			buf = append(buf, d.data[start:d.i]...)
			d.i++
			var e *serdeError
			if buf, e = d.parseEscape(buf); e != nil {
				return "", e
			}
			start = d.i
		default:
			d.i++
			return "", d.err(`control character (\u0000-\u001F) found while parsing a string`)
		}
	}
}

func (d *sdec) parseEscape(buf []byte) ([]byte, *serdeError) {
	if d.i >= len(d.data) {
		return nil, d.err("EOF while parsing a string")
	}
	c := d.data[d.i]
	d.i++
	switch c {
	case '"', '\\', '/':
		return append(buf, c), nil
	case 'b':
		return append(buf, '\b'), nil
	case 'f':
		return append(buf, '\f'), nil
	case 'n':
		return append(buf, '\n'), nil
	case 'r':
		return append(buf, '\r'), nil
	case 't':
		return append(buf, '\t'), nil
	case 'u':
		return d.parseUnicodeEscape(buf)
	}
	return nil, d.err("invalid escape")
}

func (d *sdec) hex4() (rune, *serdeError) {
	if len(d.data)-d.i < 4 {
		d.i = len(d.data)
		return 0, d.err("EOF while parsing a string")
	}
	h := d.data[d.i : d.i+4]
	d.i += 4
	v, err := strconv.ParseUint(string(h), 16, 16)
	if err != nil || strings.ContainsAny(string(h), "+-") {
		return 0, d.err("invalid escape")
	}
	return rune(v), nil
}

func (d *sdec) parseUnicodeEscape(buf []byte) ([]byte, *serdeError) {
	n, e := d.hex4()
	if e != nil {
		return nil, e
	}
	if n >= 0xDC00 && n <= 0xDFFF {
		return nil, d.err("lone leading surrogate in hex escape")
	}
	if n < 0xD800 || n > 0xDBFF {
		return utf8.AppendRune(buf, n), nil
	}
	for _, want := range []byte{'\\', 'u'} {
		if d.i >= len(d.data) {
			return nil, d.err("EOF while parsing a string")
		}
		c := d.data[d.i]
		d.i++
		if c != want {
			return nil, d.err("unexpected end of hex escape")
		}
	}
	n2, e := d.hex4()
	if e != nil {
		return nil, e
	}
	if n2 < 0xDC00 || n2 > 0xDFFF {
		return nil, d.err("lone leading surrogate in hex escape")
	}
	return utf8.AppendRune(buf, (n-0xD800)<<10|(n2-0xDC00)+0x10000), nil
}

// enter is serde_json's check_recursion.
func (d *sdec) enter() *serdeError {
	d.remaining--
	if d.remaining == 0 {
		return d.peekErr("recursion limit exceeded")
	}
	return nil
}

func (d *sdec) leave() { d.remaining++ }

// seqAccess is serde_json's SeqAccess::has_next_element.
type seqAccess struct {
	d     *sdec
	first bool
}

func (s *seqAccess) next() (bool, *serdeError) {
	d := s.d
	c, ok := d.ws()
	if !ok {
		return false, d.peekErr("EOF while parsing a list")
	}
	if c == ']' {
		return false, nil
	}
	if s.first {
		s.first = false
		return true, nil
	}
	if c != ',' {
		return false, d.peekErr("expected `,` or `]`")
	}
	d.i++
	c, ok = d.ws()
	switch {
	case !ok:
		return false, d.peekErr("EOF while parsing a value")
	case c == ']':
		return false, d.peekErr("trailing comma")
	}
	return true, nil
}

func (d *sdec) endSeq() *serdeError {
	c, ok := d.ws()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing a list")
	case c == ']':
		d.i++
		return nil
	case c == ',':
		d.i++
		if c, ok := d.ws(); ok && c == ']' {
			return d.peekErr("trailing comma")
		}
	}
	return d.peekErr("trailing characters")
}

// mapAccess is serde_json's MapAccess.
type mapAccess struct {
	d     *sdec
	first bool
}

// nextKey returns the next key, or ok=false at the end of the object.
func (m *mapAccess) nextKey() (string, bool, *serdeError) {
	d := m.d
	c, ok := d.ws()
	if !ok {
		return "", false, d.peekErr("EOF while parsing an object")
	}
	switch {
	case c == '}':
		return "", false, nil
	case c == ',' && !m.first:
		d.i++
		c, ok = d.ws()
	case m.first:
		m.first = false
	default:
		return "", false, d.peekErr("expected `,` or `}`")
	}
	switch {
	case !ok:
		return "", false, d.peekErr("EOF while parsing a value")
	case c == '"':
		d.i++
		k, e := d.parseStr()
		return k, e == nil, e
	case c == '}':
		return "", false, d.peekErr("trailing comma")
	}
	return "", false, d.peekErr("key must be a string")
}

func (d *sdec) objectColon() *serdeError {
	c, ok := d.ws()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing an object")
	case c == ':':
		d.i++
		return nil
	}
	return d.peekErr("expected `:`")
}

func (d *sdec) endMap() *serdeError {
	c, ok := d.ws()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing an object")
	case c == '}':
		d.i++
		return nil
	case c == ',':
		return d.peekErr("trailing comma")
	}
	return d.peekErr("trailing characters")
}

// invalidType is serde_json's peek_invalid_type: it reads the offending
// scalar to describe it, and the error gets the position after it.
func (d *sdec) invalidType(expected string) *serdeError {
	var what string
	switch c := d.peekOrNull(); {
	case c == 'n':
		d.i++
		if e := d.parseIdent("ull"); e != nil {
			return e
		}
		what = "null"
	case c == 't' || c == 'f':
		d.i++
		word := "alse"
		if c == 't' {
			word = "rue"
		}
		if e := d.parseIdent(word); e != nil {
			return e
		}
		what = "boolean `" + strconv.FormatBool(c == 't') + "`"
	case c == '-' || isDigit(c):
		if c == '-' {
			d.i++
		}
		n, e := d.parseInteger(c != '-')
		if e != nil {
			return e
		}
		what = n.unexpected()
	case c == '"':
		d.i++
		s, e := d.parseStr()
		if e != nil {
			return e
		}
		what = "string " + rustDebugString(s)
	case c == '[':
		what = "sequence"
	case c == '{':
		what = "map"
	default:
		return d.peekErr("expected value")
	}
	return d.fix(customErr("invalid type: %s, expected %s", what, expected))
}

// anyValue is deserialize_any into serde_json::Value.
func (d *sdec) anyValue() (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	var v any
	var e *serdeError
	switch {
	case c == 'n':
		d.i++
		e = d.parseIdent("ull")
	case c == 't':
		d.i++
		v, e = true, d.parseIdent("rue")
	case c == 'f':
		d.i++
		v, e = false, d.parseIdent("alse")
	case c == '-' || isDigit(c):
		if c == '-' {
			d.i++
		}
		v, e = d.parseInteger(c != '-')
	case c == '"':
		d.i++
		v, e = d.parseStr()
	case c == '[':
		if e = d.enter(); e != nil {
			return nil, e
		}
		d.i++
		items := []any{}
		s := &seqAccess{d: d, first: true}
		for {
			more, err := s.next()
			if err != nil || !more {
				e = err
				break
			}
			it, err := d.anyValue()
			if err != nil {
				e = err
				break
			}
			items = append(items, it)
		}
		d.leave()
		if end := d.endSeq(); e == nil {
			e = end
		}
		v = items
	case c == '{':
		if e = d.enter(); e != nil {
			return nil, e
		}
		d.i++
		obj := map[string]any{}
		m := &mapAccess{d: d, first: true}
		for {
			k, more, err := m.nextKey()
			if err != nil || !more {
				e = err
				break
			}
			if err = d.objectColon(); err != nil {
				e = err
				break
			}
			val, err := d.anyValue()
			if err != nil {
				e = err
				break
			}
			obj[k] = val // serde_json's Map keeps the last duplicate
		}
		d.leave()
		if end := d.endMap(); e == nil {
			e = end
		}
		v = obj
	default:
		return nil, d.peekErr("expected value")
	}
	if e != nil {
		return nil, d.fix(e)
	}
	return v, nil
}

// value deserializes one value of type t.
func (d *sdec) value(t *ty) (any, *serdeError) {
	switch t.kind {
	case tAny:
		return d.anyValue()
	case tUint, tInt:
		return d.number(t)
	case tBool:
		return d.boolean(t.name)
	case tString:
		return d.str(t.name, nil)
	case tStrVisit:
		return d.str(t.name, t.custom)
	case tCustom:
		s, e := d.str("a string", nil)
		if e != nil {
			return nil, e
		}
		// The check runs after String::deserialize returned: its error
		// is positioned by whoever fixes it next (the enclosing struct).
		if err := t.custom(s.(string)); err != nil {
			return nil, customErr("%s", err)
		}
		return s, nil
	case tEnum:
		return d.enum(t)
	case tSeq:
		return d.seq(t)
	case tMap:
		return d.stringMap(t)
	case tStruct:
		return d.structValue(t)
	case tUntagged:
		return d.untagged(t)
	}
	return nil, customErr("fcsim: unknown schema kind %d", t.kind)
}

func (d *sdec) number(t *ty) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if c != '-' && !isDigit(c) {
		return nil, d.invalidType(t.name)
	}
	if c == '-' {
		d.i++
	}
	n, e := d.parseInteger(c != '-')
	if e != nil {
		return nil, e
	}
	switch {
	case n.kind == 'f':
		return nil, d.fix(customErr("invalid type: %s, expected %s", n.unexpected(), t.name))
	case t.kind == tUint && (n.kind == 'i' || n.u > t.max):
		return nil, d.fix(customErr("invalid value: %s, expected %s", n.unexpected(), t.name))
	case t.kind == tInt && n.kind == 'u' && n.u > t.max:
		return nil, d.fix(customErr("invalid value: %s, expected %s", n.unexpected(), t.name))
	case t.kind == tInt && n.kind == 'i' && n.i < t.min:
		return nil, d.fix(customErr("invalid value: %s, expected %s", n.unexpected(), t.name))
	}
	return n, nil
}

func (d *sdec) boolean(expected string) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	switch c {
	case 't':
		d.i++
		return true, d.parseIdent("rue")
	case 'f':
		d.i++
		return false, d.parseIdent("alse")
	}
	return nil, d.invalidType(expected)
}

// str is deserialize_str; visit, when set, is the visitor's own check
// (Ipv4Addr's FromStr), whose error is positioned right after the string.
func (d *sdec) str(expected string, visit func(string) error) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if c != '"' {
		return nil, d.invalidType(expected)
	}
	d.i++
	s, e := d.parseStr()
	if e != nil {
		return nil, e
	}
	if visit != nil {
		if err := visit(s); err != nil {
			return nil, d.fix(customErr("%s", err))
		}
	}
	return s, nil
}

// enum is deserialize_enum for enums of unit variants: "Variant" or
// {"Variant": null}.
func (d *sdec) enum(t *ty) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	variant := func() (any, *serdeError) {
		v, e := d.str("variant identifier", nil)
		if e != nil {
			return nil, e
		}
		for _, name := range t.variants {
			if name == v {
				return v, nil
			}
		}
		return nil, d.fix(customErr("unknown variant `%s`, %s", v, expectedList(t.variants)))
	}
	switch c {
	case '"':
		return variant()
	case '{':
		if e := d.enter(); e != nil {
			return nil, e
		}
		d.i++
		v, e := variant()
		if e == nil {
			e = d.objectColon()
		}
		if e == nil {
			// A unit variant's content must be null.
			c, ok := d.ws()
			switch {
			case !ok:
				e = d.peekErr("EOF while parsing a value")
			case c == 'n':
				d.i++
				e = d.parseIdent("ull")
			default:
				e = d.invalidType("unit")
			}
		}
		d.leave()
		if e != nil {
			return nil, e
		}
		c, ok := d.ws()
		switch {
		case !ok:
			return nil, d.err("EOF while parsing an object")
		case c != '}':
			return nil, d.err("expected value")
		}
		d.i++
		return v, nil
	}
	return nil, d.peekErr("expected value")
}

func (d *sdec) seq(t *ty) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if c != '[' {
		return nil, d.invalidType(t.name)
	}
	if e := d.enter(); e != nil {
		return nil, e
	}
	d.i++
	items := []any{}
	var e *serdeError
	s := &seqAccess{d: d, first: true}
	for {
		more, err := s.next()
		if err != nil || !more {
			e = err
			break
		}
		v, err := d.value(t.elem)
		if err != nil {
			e = err
			break
		}
		items = append(items, v)
	}
	d.leave()
	if end := d.endSeq(); e == nil {
		e = end
	}
	if e != nil {
		return nil, d.fix(e)
	}
	return items, nil
}

// stringMap is a HashMap<String, T>.
func (d *sdec) stringMap(t *ty) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if c != '{' {
		return nil, d.invalidType("a map")
	}
	if e := d.enter(); e != nil {
		return nil, e
	}
	d.i++
	out := map[string]any{}
	var e *serdeError
	m := &mapAccess{d: d, first: true}
	for {
		k, more, err := m.nextKey()
		if err != nil || !more {
			e = err
			break
		}
		if err = d.objectColon(); err != nil {
			e = err
			break
		}
		v, err := d.value(t.elem)
		if err != nil {
			e = err
			break
		}
		out[k] = v
	}
	d.leave()
	if end := d.endMap(); e == nil {
		e = end
	}
	if e != nil {
		return nil, d.fix(e)
	}
	return out, nil
}

// fieldValue deserializes a struct field: Option<T> reads null as None.
func (d *sdec) fieldValue(f field) (any, *serdeError) {
	if f.option() {
		if c, ok := d.ws(); ok && c == 'n' {
			d.i++
			return nil, d.parseIdent("ull")
		}
	}
	return d.value(f.t)
}

// structValue is deserialize_struct with a serde-derived visitor.
func (d *sdec) structValue(t *ty) (any, *serdeError) {
	c, ok := d.ws()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	var out map[string]any
	var e *serdeError
	switch c {
	case '[':
		if e := d.enter(); e != nil {
			return nil, e
		}
		d.i++
		out, e = d.structSeq(t)
		d.leave()
		if end := d.endSeq(); e == nil {
			e = end
		}
	case '{':
		if e := d.enter(); e != nil {
			return nil, e
		}
		d.i++
		out, e = d.structMap(t)
		d.leave()
		if end := d.endMap(); e == nil {
			e = end
		}
	default:
		e = d.invalidType("struct " + t.name)
	}
	if e != nil {
		return nil, d.fix(e)
	}
	return out, nil
}

func (d *sdec) structMap(t *ty) (map[string]any, *serdeError) {
	out := map[string]any{}
	m := &mapAccess{d: d, first: true}
	for {
		k, more, e := m.nextKey()
		if e != nil {
			return nil, e
		}
		if !more {
			break
		}
		f, known := t.field(k)
		if !known {
			if t.deny {
				return nil, customErr("unknown field `%s`, %s", k, fieldList(t.fields))
			}
			if e := d.objectColon(); e != nil {
				return nil, e
			}
			if _, e := d.anyValue(); e != nil {
				return nil, e
			}
			continue
		}
		if _, dup := out[k]; dup {
			return nil, customErr("duplicate field `%s`", k)
		}
		if e := d.objectColon(); e != nil {
			return nil, e
		}
		v, e := d.fieldValue(f)
		if e != nil {
			return nil, e
		}
		out[k] = v
	}
	for _, f := range t.fields {
		if _, seen := out[f.name]; !seen && f.kind == fReq {
			return nil, customErr("missing field `%s`", f.name)
		}
	}
	// Absent and null optional fields mean the same to every model.
	for k, v := range out {
		if v == nil {
			delete(out, k)
		}
	}
	return out, nil
}

// structSeq is the derived visit_seq: fields in declaration order.
func (d *sdec) structSeq(t *ty) (map[string]any, *serdeError) {
	out := map[string]any{}
	s := &seqAccess{d: d, first: true}
	for idx, f := range t.fields {
		more, e := s.next()
		if e != nil {
			return nil, e
		}
		if !more {
			if f.kind == fDefault || f.kind == fOptDefault {
				continue
			}
			n := strconv.Itoa(len(t.fields)) + " elements"
			if len(t.fields) == 1 {
				n = "1 element"
			}
			return nil, customErr("invalid length %d, expected struct %s with %s", idx, t.name, n)
		}
		v, e := d.fieldValue(f)
		if e != nil {
			return nil, e
		}
		if v != nil {
			out[f.name] = v
		}
	}
	return out, nil
}

// untagged is #[serde(untagged)]: serde buffers the value and tries each
// variant; if none fits, only the enum's name is reported.
func (d *sdec) untagged(t *ty) (any, *serdeError) {
	from := d.i
	v, e := d.anyValue()
	if e != nil {
		return nil, e
	}
	raw := d.data[from:d.i]
	for _, alt := range t.alts {
		sub := newSdec(raw)
		if v2, e := sub.value(alt); e == nil {
			if alt.kind == tString {
				return v, nil
			}
			return v2, nil
		}
	}
	return nil, customErr("data did not match any variant of untagged enum %s", t.name)
}

// decodeValue is serde_json::from_slice::<T>: one value, then only
// whitespace.
func decodeValue(body []byte, t *ty) (any, error) {
	d := newSdec(body)
	v, e := d.value(t)
	if e != nil {
		return nil, d.fix(e)
	}
	if _, more := d.ws(); more {
		return nil, d.peekErr("trailing characters")
	}
	return v, nil
}

// decodeBody decodes body as t and fills out (an internal/firecracker
// model, or nil) from the normalized value, which it also returns.
func decodeBody(body []byte, t *ty, out any) (any, error) {
	v, err := decodeValue(body, t)
	if err != nil {
		return nil, err
	}
	if out != nil {
		if err := fill(v, out); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// fill copies a normalized value into a model.
func fill(v any, out any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("fcsim: encode decoded value: %w", err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		// The schema accepted it, so this is a range the Go model
		// cannot hold; say so in serde's manner.
		return &serdeError{msg: err.Error()}
	}
	return nil
}

// has reports whether a decoded object has a non-null member name.
func has(v any, name string) bool {
	m, ok := v.(map[string]any)
	if !ok {
		return false
	}
	_, ok = m[name]
	return ok
}

// expectedList is serde's "expected `a` or `b`" / "expected one of …".
func expectedList(names []string) string {
	switch len(names) {
	case 0:
		return "there are no variants"
	case 1:
		return "expected `" + names[0] + "`"
	case 2:
		return "expected `" + names[0] + "` or `" + names[1] + "`"
	}
	return "expected one of " + quoteAll(names)
}

func fieldList(fields []field) string {
	switch len(fields) {
	case 0:
		return "there are no fields"
	case 1:
		return "expected `" + fields[0].name + "`"
	case 2:
		return "expected `" + fields[0].name + "` or `" + fields[1].name + "`"
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return "expected one of " + quoteAll(names)
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	return strings.Join(q, ", ")
}
