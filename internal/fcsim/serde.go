package fcsim

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// A schema mirrors one of firecracker's serde types closely enough to yield
// serde's messages: fields in declaration order (for "expected one of"),
// deny_unknown_fields, duplicate and missing fields, and the
// "invalid type"/"invalid value" texts with serde's expectation names.

type tkind int

const (
	tUint tkind = iota
	tInt
	tBool
	tString
	tEnum
	tStruct
	tSeq
	tMap
	tAny
	tCustom // a string checked by a function (MAC, log level, IP address)
)

type ty struct {
	kind     tkind
	name     string // serde's expectation text, or the struct/enum name
	max      uint64
	min      int64 // tInt
	variants []string
	fields   []field
	elem     *ty
	// custom validates the string of a tCustom; its error is serde's custom
	// message.
	custom func(string) error
}

type field struct {
	name     string
	t        *ty
	required bool
}

var (
	tyU8    = &ty{kind: tUint, name: "u8", max: math.MaxUint8}
	tyU16   = &ty{kind: tUint, name: "u16", max: math.MaxUint16}
	tyU32   = &ty{kind: tUint, name: "u32", max: math.MaxUint32}
	tyU64   = &ty{kind: tUint, name: "u64", max: math.MaxUint64}
	tyUsize = &ty{kind: tUint, name: "usize", max: math.MaxUint64}
	tyI32   = &ty{kind: tInt, name: "i32", min: math.MinInt32, max: math.MaxInt32}
	tyBool  = &ty{kind: tBool, name: "a boolean"}
	tyStr   = &ty{kind: tString, name: "a string"}
	tyPath  = &ty{kind: tString, name: "path string"}
	tyAny   = &ty{kind: tAny}
)

func req(name string, t *ty) field { return field{name: name, t: t, required: true} }
func opt(name string, t *ty) field { return field{name: name, t: t} }

func structOf(name string, fields ...field) *ty {
	return &ty{kind: tStruct, name: name, fields: fields}
}

func enumOf(name string, variants ...string) *ty {
	return &ty{kind: tEnum, name: name, variants: variants}
}

func seqOf(elem *ty) *ty { return &ty{kind: tSeq, name: "a sequence", elem: elem} }

// decodeBody parses body, checks it against t like serde would, and then
// fills out (a firecracker model) with encoding/json.
func decodeBody(body []byte, t *ty, out any) error {
	n, err := parseJSON(body)
	if err != nil {
		return err
	}
	if err := validate(n, t, false); err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		// The schema accepted it, so this is a range the Go model cannot
		// hold (a u64 above MaxInt64); report it in serde's words.
		return &serdeError{msg: err.Error()}
	}
	return nil
}

// validate checks n against t. nullable says an Option<T> field holds it.
func validate(n *jnode, t *ty, nullable bool) error {
	if n.kind == jNull && nullable {
		return nil
	}
	switch t.kind {
	case tAny:
		return nil
	case tUint, tInt:
		if n.kind != jNumber {
			return typeErr(n, t.name)
		}
		if !isInteger(n.num) {
			return &serdeError{"invalid type: " + n.unexpected() + ", expected " + t.name, n.end}
		}
		if t.kind == tUint {
			u, err := strconv.ParseUint(n.num, 10, 64)
			if err != nil || u > t.max {
				if err != nil && !strings.HasPrefix(n.num, "-") {
					// Larger than u64: serde_json reads it as a float.
					return &serdeError{"invalid type: " + floatUnexpected(n.num) + ", expected " + t.name, n.end}
				}
				return &serdeError{"invalid value: " + n.unexpected() + ", expected " + t.name, n.end}
			}
			return nil
		}
		i, err := strconv.ParseInt(n.num, 10, 64)
		if err != nil || i < t.min || i > int64(t.max) {
			return &serdeError{"invalid value: " + n.unexpected() + ", expected " + t.name, n.end}
		}
		return nil
	case tBool:
		if n.kind != jBool {
			return typeErr(n, t.name)
		}
		return nil
	case tString:
		if n.kind != jString {
			return typeErr(n, t.name)
		}
		return nil
	case tCustom:
		if n.kind != jString {
			return typeErr(n, "a string")
		}
		if err := t.custom(n.str); err != nil {
			return &serdeError{err.Error(), n.end}
		}
		return nil
	case tEnum:
		if n.kind != jString {
			return &serdeError{"expected value", n.start}
		}
		for _, v := range t.variants {
			if v == n.str {
				return nil
			}
		}
		return &serdeError{"unknown variant `" + n.str + "`, " + expectedList(t.variants), n.end}
	case tSeq:
		if n.kind != jArray {
			return typeErr(n, t.name)
		}
		for _, it := range n.items {
			if err := validate(it, t.elem, false); err != nil {
				return err
			}
		}
		return nil
	case tMap:
		if n.kind != jObject {
			return typeErr(n, "a map")
		}
		for _, m := range n.members {
			if err := validate(m.val, t.elem, false); err != nil {
				return err
			}
		}
		return nil
	case tStruct:
		return validateStruct(n, t)
	}
	return fmt.Errorf("fcsim: unknown schema kind %d", t.kind)
}

func validateStruct(n *jnode, t *ty) error {
	if n.kind == jArray {
		// serde accepts a sequence for a struct; firecracker's bodies never
		// use that form, so report what serde reports for a wrong length.
		return &serdeError{"invalid type: sequence, expected struct " + t.name, n.start}
	}
	if n.kind != jObject {
		return typeErr(n, "struct "+t.name)
	}
	seen := make(map[string]bool, len(n.members))
	for _, m := range n.members {
		f, ok := t.field(m.key)
		if !ok {
			return &serdeError{"unknown field `" + m.key + "`, " + fieldList(t.fields), m.keyEnd}
		}
		if seen[m.key] {
			return &serdeError{"duplicate field `" + m.key + "`", m.keyEnd}
		}
		seen[m.key] = true
		if err := validate(m.val, f.t, !f.required); err != nil {
			return err
		}
	}
	for _, f := range t.fields {
		if f.required && !seen[f.name] {
			return &serdeError{"missing field `" + f.name + "`", n.end}
		}
	}
	return nil
}

func (t *ty) field(name string) (field, bool) {
	for _, f := range t.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

func typeErr(n *jnode, expected string) error {
	at := n.end
	if n.kind == jArray || n.kind == jObject {
		at = n.start
	}
	return &serdeError{"invalid type: " + n.unexpected() + ", expected " + expected, at}
}

func floatUnexpected(num string) string {
	f, _ := strconv.ParseFloat(num, 64)
	return "floating point `" + strconv.FormatFloat(f, 'e', -1, 64) + "`"
}

// expectedList is serde's "expected `a` or `b`" / "expected one of …" for
// enum variants.
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
	if len(fields) == 0 {
		return "there are no fields"
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return expectedList(names)
}

func quoteAll(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	return strings.Join(q, ", ")
}
