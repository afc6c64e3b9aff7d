package fcsim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// A minimal HTTP/1.1 server with firecracker's micro_http behaviour: only
// GET, PUT, PATCH and DELETE; bodies framed by Content-Length; status lines
// without a reason phrase; "Server: Firecracker API"; HTTP-layer errors as
// {"error": …}; at most maxConns connections; one request processed at a
// time across all connections. net/http would do most of this, but not the
// exact wire format, and it costs resident memory in every simulated VM.

const maxConns = 10

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
			io.WriteString(c, "HTTP/1.1 503 \r\nServer: Firecracker API\r\nConnection: close\r\n"+
				"Content-Type: application/json\r\nContent-Length: 41\r\n\r\n"+
				`{ "error": "Too many open connections" }`+"\n")
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
	r := bufio.NewReaderSize(c, 1024)
	for {
		req, keep, err := s.readRequest(r, c)
		if err != nil {
			var pe *parseError
			if errors.As(err, &pe) {
				writeResponse(c, httpError(pe.msg))
			}
			return
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

// parseError is an HTTP-layer error: answered with {"error": …}, after
// which the connection is dropped.
type parseError struct{ msg string }

func (e *parseError) Error() string { return e.msg }

func httpError(msg string) httpResponse {
	b, _ := json.Marshal(msg + "\nAll previous unanswered requests will be dropped.")
	return httpResponse{status: 400, body: []byte(`{ "error": ` + string(b) + ` }`)}
}

func (s *apiServer) readRequest(r *bufio.Reader, w io.Writer) (*httpRequest, bool, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, false, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return nil, false, &parseError{"Invalid request line."}
	}
	method, uri, version := parts[0], parts[1], parts[2]
	switch method {
	case "GET", "PUT", "PATCH", "DELETE":
	default:
		return nil, false, &parseError{"Invalid HTTP Method: Unsupported HTTP method."}
	}
	if version != "HTTP/1.1" && version != "HTTP/1.0" {
		return nil, false, &parseError{"Invalid HTTP Version: Unsupported HTTP version."}
	}
	if rest, ok := strings.CutPrefix(uri, "http://"); ok {
		// The absolute form: drop the host.
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			uri = rest[i:]
		} else {
			uri = "/"
		}
	}
	if !strings.HasPrefix(uri, "/") {
		return nil, false, &parseError{"Invalid URI."}
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	length, keep, expect := 0, version == "HTTP/1.1", false
	for {
		h, err := readLine(r)
		if err != nil {
			return nil, false, err
		}
		if h == "" {
			break
		}
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, false, &parseError{"Invalid header. Reason: Invalid header format."}
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return nil, false, &parseError{"Invalid header. Reason: Invalid value. Key:Content-Length; Value:" + value}
			}
			length = n
		case "transfer-encoding":
			if !strings.EqualFold(value, "identity") {
				return nil, false, &parseError{"Invalid header. Reason: Invalid value. Key:Transfer-Encoding; Value:" + value}
			}
		case "connection":
			switch strings.ToLower(value) {
			case "close":
				keep = false
			case "keep-alive":
				keep = true
			}
		case "expect":
			expect = strings.EqualFold(value, "100-continue")
		}
	}
	if length > s.maxPayload {
		return nil, false, &parseError{"Request payload with size " + strconv.Itoa(length) +
			" is larger than the limit of " + strconv.Itoa(s.maxPayload) + " allowed by server."}
	}
	req := &httpRequest{method: method, path: uri}
	if length > 0 {
		if expect {
			io.WriteString(w, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		req.body = make([]byte, length)
		if _, err := io.ReadFull(r, req.body); err != nil {
			return nil, false, err
		}
	}
	return req, keep, nil
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", &parseError{"Invalid request line."}
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
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
