package fcsim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// A minimal HTTP/1.1 server with firecracker's micro_http behaviour (the
// revision firecracker v1.16 pins): only GET, PUT, PATCH and DELETE;
// CRLF-terminated lines of at most 1024 bytes; bodies framed by
// Content-Length; status lines without a reason phrase; "Server:
// Firecracker API"; HTTP-layer errors as micro_http formats them, which is
// not JSON-escaped (a raw line feed inside the string); at most maxConns
// connections; one request processed at a time across all connections.
// net/http would do most of this, but not the exact wire format, and it
// costs resident memory in every simulated VM.

const maxConns = 10

// serverFullMessage is micro_http's SERVER_FULL_ERROR_MESSAGE, byte for
// byte: no space after the status code and no Content-Type, unlike every
// other answer.
const serverFullMessage = "HTTP/1.1 503\r\nServer: Firecracker API\r\nConnection: close\r\n" +
	"Content-Length: 40\r\n\r\n{ \"error\": \"Too many open connections\" }"

// lineLimit is micro_http's connection buffer: a request line or header
// line (with its CRLF) must fit in it.
const lineLimit = 1024

type httpRequest struct {
	method string // GET, PUT, PATCH, DELETE
	path   string // absolute path, query removed
	body   []byte // nil when Content-Length is absent or 0
}

type httpResponse struct {
	status      int
	body        []byte // nil: no body
	deprecation bool
}

type apiServer struct {
	ln         *net.UnixListener
	maxPayload int
	handle     func(*httpRequest) httpResponse
	after      func() // runs after each response is written (deferred exits)

	serial sync.Mutex // firecracker answers one request at a time

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// serve accepts connections until ctx ends or the listener fails.
func (s *apiServer) serve(ctx context.Context) {
	s.conns = make(map[net.Conn]struct{})
	stop := context.AfterFunc(ctx, func() {
		s.ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			break
		}
		s.mu.Lock()
		full := len(s.conns) >= maxConns
		if !full && ctx.Err() == nil {
			s.conns[c] = struct{}{}
		}
		s.mu.Unlock()
		if full {
			io.WriteString(c, serverFullMessage)
			c.Close()
			continue
		}
		s.wg.Add(1)
		go s.serveConn(c)
	}
	s.wg.Wait()
}

func (s *apiServer) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReaderSize(c, lineLimit)
	for {
		req, keep, err := s.readRequest(r, c)
		if err != nil {
			var pe *parseError
			if !errors.As(err, &pe) {
				return
			}
			if werr := writeResponse(c, httpError(pe.msg)); werr != nil || pe.fatal {
				return
			}
			// micro_http answers and keeps the connection; what was
			// already received is dropped with the failed request.
			r.Reset(c)
			continue
		}
		s.serial.Lock()
		resp := s.handle(req)
		werr := writeResponse(c, resp)
		s.serial.Unlock()
		if s.after != nil {
			s.after()
		}
		if werr != nil || !keep {
			return
		}
	}
}

// parseError is an HTTP-layer error (micro_http's RequestError). fatal
// ends the connection after the answer: the body of a payload that is
// too large is still on its way and cannot be told from a next request.
type parseError struct {
	msg   string
	fatal bool
}

func (e *parseError) Error() string { return e.msg }

var (
	errInvalidRequest = &parseError{msg: "Invalid request."}
	errBadMethod      = &parseError{msg: "Invalid HTTP Method: Unsupported HTTP method."}
	errBadVersion     = &parseError{msg: "Invalid HTTP Version: Unsupported HTTP version."}
)

func headerError(reason string) *parseError {
	return &parseError{msg: "Invalid header. Reason: " + reason}
}

// httpError is micro_http's answer to a parse error. The message goes
// into the JSON string as it is, unescaped, as micro_http's format! does.
func httpError(msg string) httpResponse {
	return httpResponse{status: 400, body: []byte(`{ "error": "` + msg + "\nAll previous unanswered requests will be dropped.\" }")}
}

// absPath is micro_http's Uri::get_abs_path.
func absPath(uri string) string {
	if rest, ok := strings.CutPrefix(uri, "http://"); ok {
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			return rest[i:]
		}
		return ""
	}
	if strings.HasPrefix(uri, "/") {
		return uri
	}
	return ""
}

func (s *apiServer) readRequest(r *bufio.Reader, w io.Writer) (*httpRequest, bool, error) {
	line, err := readCRLF(r, errInvalidRequest)
	if err != nil {
		return nil, false, err
	}
	// RequestLine::parse_request_line: method up to the first space,
	// URI up to the next, the version is everything after it.
	method, rest, ok1 := strings.Cut(line, " ")
	uri, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return nil, false, errInvalidRequest
	}
	switch method {
	case "GET", "PUT", "PATCH", "DELETE":
	default:
		return nil, false, errBadMethod
	}
	switch {
	case uri == "":
		return nil, false, &parseError{msg: "Invalid URI: Empty URI not allowed."}
	case !utf8.ValidString(uri):
		return nil, false, &parseError{msg: "Invalid URI: Cannot parse URI as UTF-8."}
	}
	if version != "HTTP/1.1" && version != "HTTP/1.0" {
		return nil, false, errBadVersion
	}
	length, keep, expect := 0, true, false
	for {
		h, err := readCRLF(r, nil)
		if err != nil {
			return nil, false, err
		}
		if h == "" {
			break
		}
		if !utf8.ValidString(h) {
			return nil, false, headerError("Header contains invalid characters. Key: " + utf8ErrorText(h))
		}
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, false, headerError("Header is incorrectly formatted. Key: " + h)
		}
		switch strings.TrimSpace(strings.ToLower(name)) {
		case "content-length":
			n, err := parseRustU32(strings.TrimSpace(value))
			if err != nil {
				return nil, false, headerError("Invalid value. Key:" + name + "; Value:" + value)
			}
			length = int(n)
		case "expect":
			expect = strings.TrimSpace(value) == "100-continue"
		case "accept-encoding":
			if perr := checkAcceptEncoding(strings.TrimSpace(value)); perr != nil {
				return nil, false, perr
			}
		case "connection":
			// micro_http ignores it and never closes a connection; a
			// client that asks for close gets it after the answer.
			keep = !strings.EqualFold(strings.TrimSpace(value), "close")
		}
	}
	if length > s.maxPayload {
		return nil, false, &parseError{msg: "Request payload with size " + strconv.Itoa(length) +
			" is larger than the limit of " + strconv.Itoa(s.maxPayload) + " allowed by server.", fatal: true}
	}
	req := &httpRequest{method: method, path: absPath(uri)}
	if length > 0 {
		if expect {
			io.WriteString(w, version+" 100 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n")
		}
		req.body = make([]byte, length)
		if _, err := io.ReadFull(r, req.body); err != nil {
			return nil, false, err
		}
	}
	return req, keep, nil
}

// checkAcceptEncoding is micro_http's Encoding::try_from.
func checkAcceptEncoding(v string) *parseError {
	if v == "" {
		return errInvalidRequest
	}
	for _, enc := range strings.Split(v, ",") {
		switch strings.TrimSpace(enc) {
		case "identity;q=0":
			return headerError("Invalid value. Key:Accept-Encoding; Value:" + enc)
		case "*;q=0":
			if !strings.Contains(v, "identity") {
				return headerError("Invalid value. Key:Accept-Encoding; Value:" + enc)
			}
		}
	}
	return nil
}

// parseRustU32 is str::parse::<u32>: digits with an optional '+'.
func parseRustU32(s string) (uint32, error) {
	v, err := parseU32(s)
	if err != nil {
		return 0, err
	}
	return v, nil
}

// utf8ErrorText is Rust's Utf8Error Display for s.
func utf8ErrorText(s string) string {
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			if len(s)-i < utf8.UTFMax && !utf8.FullRuneInString(s[i:]) {
				return "incomplete utf-8 byte sequence from index " + strconv.Itoa(i)
			}
			return "invalid utf-8 sequence of 1 bytes from index " + strconv.Itoa(i)
		}
		i += n
	}
	return ""
}

// readCRLF reads one line ended by CRLF (a bare LF is part of the line,
// as in micro_http). A line that does not fit in the buffer is tooLong,
// or for a header line micro_http's size error over the buffer's text.
func readCRLF(r *bufio.Reader, tooLong *parseError) (string, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil && bytes.HasSuffix(line, []byte("\r\n")) {
			return string(line[:len(line)-2]), nil
		}
		if len(line) >= lineLimit {
			if tooLong != nil {
				return "", tooLong
			}
			return "", headerError("Invalid content length. Header: " + strings.ToValidUTF8(string(line[:lineLimit]), "\uFFFD"))
		}
		if err != nil && err != bufio.ErrBufferFull {
			return "", err
		}
	}
}

func writeResponse(w io.Writer, r httpResponse) error {
	var sb strings.Builder
	sb.WriteString("HTTP/1.1 ")
	sb.WriteString(strconv.Itoa(r.status))
	sb.WriteString(" \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n")
	if r.deprecation {
		sb.WriteString("Deprecation: true\r\n")
	}
	if r.body != nil {
		sb.WriteString("Content-Type: application/json\r\nContent-Length: ")
		sb.WriteString(strconv.Itoa(len(r.body)))
		sb.WriteString("\r\n\r\n")
		sb.Write(r.body)
	} else {
		sb.WriteString("\r\n")
	}
	_, err := io.WriteString(w, sb.String())
	return err
}
