package fcsim

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// JSON output the way firecracker's serde_json (1.0.149, compact) writes
// it: strings escape only '"', '\\' and control characters (never '<', '>'
// or '&' as encoding/json does), objects of structs keep their fields in
// declaration order, maps (MMDS data) come out with sorted keys, and
// floats use zmij's shortest form ("1.0", "1e+16", "1.5e-7"). Byte counts
// matter: the MMDS size limit is measured on this encoding.

// object is a struct's serialization: its fields in declaration order.
type object []kv

type kv struct {
	k string
	v any
}

// marshalJSON encodes v (nil, bool, string, integers, jnum, float64,
// []any, slices of objects, map[string]any, object) like serde_json.
func marshalJSON(v any) []byte { return appendJSON(nil, v) }

func appendJSON(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, x)
	case string:
		return appendJSONString(b, x)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case float64:
		return append(b, formatFloat(x)...)
	case jnum:
		return append(b, x.String()...)
	case object:
		b = append(b, '{')
		for i, f := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, f.k)
			b = append(b, ':')
			b = appendJSON(b, f.v)
		}
		return append(b, '}')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // serde_json's Map is a BTreeMap
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSON(b, x[k])
		}
		return append(b, '}')
	case []any:
		b = append(b, '[')
		for i, it := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, it)
		}
		return append(b, ']')
	case []object:
		b = append(b, '[')
		for i, it := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, it)
		}
		return append(b, ']')
	case []string:
		b = append(b, '[')
		for i, it := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, it)
		}
		return append(b, ']')
	}
	panic(fmt.Sprintf("fcsim: cannot encode %T as JSON", v))
}

func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b = append(b, '\\', '"')
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// formatFloat is zmij's Buffer::format as serde_json uses it: shortest
// round-trip digits, fixed notation for decimal exponents -5..=15 (always
// with a fractional part), scientific "de±x" otherwise. Non-finite
// values serialize as null.
func formatFloat(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "null"
	}
	sign := ""
	if math.Signbit(f) {
		sign, f = "-", -f
	}
	if f == 0 {
		return sign + "0.0"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±xx
	mant, expText, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, _ := strconv.Atoi(expText)
	n := len(digits)
	switch {
	case exp >= -5 && exp <= 15 && n-1 <= exp:
		return sign + digits + strings.Repeat("0", exp-(n-1)) + ".0"
	case exp >= 0 && exp <= 15:
		return sign + digits[:exp+1] + "." + digits[exp+1:]
	case exp >= -5 && exp < 0:
		return sign + "0." + strings.Repeat("0", -exp-1) + digits
	}
	out := sign + digits[:1]
	if n > 1 {
		out += "." + digits[1:]
	}
	if exp >= 0 {
		return out + "e+" + strconv.Itoa(exp)
	}
	return out + "e-" + strconv.Itoa(-exp)
}

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
			if r < 0x20 || r == 0x7f || r >= 0x80 && (!unicode.IsPrint(r) || unicode.In(r, unicode.Mn, unicode.Me)) {
				fmt.Fprintf(&sb, `\u{%x}`, r)
			} else {
				sb.WriteRune(r)
			}
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
