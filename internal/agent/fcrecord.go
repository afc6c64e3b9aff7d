package agent

// A firecracker metrics record is one JSON object of groups, each an
// object of numbers (or of {min_us,max_us,sum_us} aggregates):
//
//	{"utc_timestamp_ms":…,"uart":{"write_count":287,…},"block":{…},…}
//
// An agent with a thousand VMs reads a thousand of these (5-6 KiB each)
// per scrape; encoding/json into maps costs ~150 µs a record, which alone
// would blow the 100 ms budget of a scrape. walkRecord is a small scanner
// for exactly this shape: it reports the numbers at depth one and two and
// skips everything else without allocating.

type recordScanner struct {
	b []byte
	i int
}

// walkRecord calls leaf(group, key, number) for every number directly in
// the record (group nil) or in one of its groups. It returns false on
// input that is not such an object; leaf may have been called by then.
func walkRecord(b []byte, leaf func(group, key, num []byte)) bool {
	s := recordScanner{b: b}
	s.ws()
	if !s.at('{') {
		return false
	}
	if !s.object(nil, 1, leaf) {
		return false
	}
	s.ws()
	return s.i == len(s.b)
}

func (s *recordScanner) at(c byte) bool { return s.i < len(s.b) && s.b[s.i] == c }

func (s *recordScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string (at its opening quote) and returns its raw bytes.
func (s *recordScanner) str() ([]byte, bool) {
	if !s.at('"') {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			j++
		case '"':
			s.i = j + 1
			return s.b[start:j], true
		}
	}
	return nil, false
}

func isNumByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

// object reads an object (at its '{'); depth 1 is the record, 2 a group.
func (s *recordScanner) object(group []byte, depth int, leaf func(group, key, num []byte)) bool {
	s.i++ // '{'
	s.ws()
	if s.at('}') {
		s.i++
		return true
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.at(':') {
			return false
		}
		s.i++
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch c := s.b[s.i]; {
		case c == '{' && depth == 1:
			if !s.object(key, 2, leaf) {
				return false
			}
		case c == '-' || c >= '0' && c <= '9':
			start := s.i
			for s.i < len(s.b) && isNumByte(s.b[s.i]) {
				s.i++
			}
			leaf(group, key, s.b[start:s.i])
		default:
			if !s.skip() {
				return false
			}
		}
		s.ws()
		switch {
		case s.at(','):
			s.i++
		case s.at('}'):
			s.i++
			return true
		default:
			return false
		}
	}
}

// skip passes over any value: an aggregate object, a string, a literal.
func (s *recordScanner) skip() bool {
	if s.at('"') {
		_, ok := s.str()
		return ok
	}
	if !s.at('{') && !s.at('[') {
		for s.i < len(s.b) && s.b[s.i] != ',' && s.b[s.i] != '}' && s.b[s.i] != ']' {
			s.i++
		}
		return true
	}
	depth := 0
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			if _, ok := s.str(); !ok {
				return false
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				s.i++
				return true
			}
		}
		s.i++
	}
	return false
}
