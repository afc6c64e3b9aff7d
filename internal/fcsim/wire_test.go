package fcsim

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawResponse is one answer as it came over the socket.
type rawResponse struct {
	raw     string // status line, headers and body, byte for byte
	status  int
	headers []string // in order, "Name: value"
	body    string
}

func (r rawResponse) header(name string) (string, bool) {
	for _, h := range r.headers {
		if k, v, _ := strings.Cut(h, ": "); strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// readRaw reads one response framed by Content-Length.
func readRaw(t testing.TB, r *bufio.Reader) rawResponse {
	t.Helper()
	var sb strings.Builder
	var resp rawResponse
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read status line: %v (got %q)", err, line)
	}
	sb.WriteString(line)
	parts := strings.SplitN(line, " ", 3)
	resp.status, _ = strconv.Atoi(strings.TrimSpace(parts[1]))
	length := 0
	for {
		h, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read header: %v", err)
		}
		sb.WriteString(h)
		h = strings.TrimSuffix(h, "\r\n")
		if h == "" {
			break
		}
		resp.headers = append(resp.headers, h)
		if v, ok := strings.CutPrefix(h, "Content-Length: "); ok {
			length, _ = strconv.Atoi(v)
		}
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatalf("read body: %v", err)
	}
	sb.Write(body)
	resp.body, resp.raw = string(body), sb.String()
	return resp
}

// exchange sends raw bytes on a new connection and reads n answers.
func exchange(t testing.TB, sock, req string, n int) []rawResponse {
	t.Helper()
	c, err := net.Dial("unix", sock)
	must(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = io.WriteString(c, req)
	must(t, err)
	r := bufio.NewReader(c)
	out := make([]rawResponse, n)
	for i := range out {
		out[i] = readRaw(t, r)
	}
	return out
}

func httpErrorBytes(msg string) string {
	body := `{ "error": "` + msg + "\nAll previous unanswered requests will be dropped.\" }"
	return "HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

func faultBytes(status int, msg string, deprecated bool) string {
	body := `{"fault_message":` + string(appendJSONString(nil, msg)) + `}`
	h := "HTTP/1.1 " + strconv.Itoa(status) + " \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
	if deprecated {
		h += "Deprecation: true\r\n"
	}
	return h + "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

const noContent = "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"

func put(path, body string) string {
	return "PUT " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// TestWireAnswers checks whole answers, byte for byte, as firecracker
// 1.16's micro_http server and API thread write them: the request, the
// status, every header in order, and the body.
func TestWireAnswers(t *testing.T) {
	p := startInProc(t)
	big := `{"k":"` + strings.Repeat("x", 51200) + `"}`
	for _, tc := range []struct {
		name, req, want string
	}{
		{"unsupported method", "POST /mmds HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
			httpErrorBytes("Invalid HTTP Method: Unsupported HTTP method.")},
		{"unsupported version", "GET / HTTP/2.0\r\n\r\n", httpErrorBytes("Invalid HTTP Version: Unsupported HTTP version.")},
		{"empty URI", "GET  HTTP/1.1\r\n\r\n", httpErrorBytes("Invalid URI: Empty URI not allowed.")},
		{"no version", "GET /\r\n\r\n", httpErrorBytes("Invalid request.")},
		{"bad content length keeps the raw value", "PUT /mmds HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
			httpErrorBytes("Invalid header. Reason: Invalid value. Key:Content-Length; Value: abc")},
		{"header without colon", "GET / HTTP/1.1\r\nnonsense\r\n\r\n",
			httpErrorBytes("Invalid header. Reason: Header is incorrectly formatted. Key: nonsense")},
		{"refused encoding", "GET / HTTP/1.1\r\nAccept-Encoding: identity;q=0\r\n\r\n",
			httpErrorBytes("Invalid header. Reason: Invalid value. Key:Accept-Encoding; Value:identity;q=0")},
		{"payload too large", "PUT /mmds HTTP/1.1\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n",
			httpErrorBytes("Request payload with size 51208 is larger than the limit of 51200 allowed by server.")},
		{"no content", put("/mmds", `{"a":"<&>"}`), noContent},
		{"MMDS data comes back as serde_json writes it", "GET /mmds HTTP/1.1\r\n\r\n",
			"HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n" +
				"Content-Length: 11\r\n\r\n" + `{"a":"<&>"}`},
		{"a query string is part of the path", "GET /version?x=1 HTTP/1.1\r\n\r\n",
			faultBytes(400, "Invalid request method and/or path: GET version?x=1.", false)},
		{"DELETE with a body", "DELETE /drives/d1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
			faultBytes(400, "Empty Delete request.", false)},
		{"fault messages escape like serde_json", put("/drives/d1", `{"drive_id":"d1","is_root_device":false,"path_on_host":"/nonexistent/<a>&\"b"}`),
			"HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n" +
				`{"fault_message":"Drive config error: Unable to create the virtio block device: Virtio backend error: ` +
				`Error manipulating the backing file: No such file or directory (os error 2) /nonexistent/<a>&\"b"}`},
		{"MMDS V1 is deprecated even when the call fails", put("/mmds/config", `{"network_interfaces":["eth0"]}`),
			faultBytes(400, "MMMDS config error: The list of network interface IDs provided contains at least one ID "+
				"that does not correspond to any existing network interface.", true)},
		{"an explicit V1 is deprecated too", put("/mmds/config", `{"version":"V1","network_interfaces":[]}`),
			faultBytes(400, "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.", true)},
		{"V2 is not", put("/mmds/config", `{"version":"V2","network_interfaces":[]}`),
			faultBytes(400, "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.", false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exchange(t, p.sock, tc.req, 1)[0].raw; got != tc.want {
				t.Fatalf("answer\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestWireConnection checks what happens around an answer on one
// connection: micro_http keeps the connection after an HTTP-layer error,
// answers "Expect: 100-continue" with an interim answer of the request's
// version, and serves pipelined requests in order.
func TestWireConnection(t *testing.T) {
	p := startInProc(t)
	t.Run("error then keep-alive", func(t *testing.T) {
		c, err := net.Dial("unix", p.sock)
		must(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		io.WriteString(c, "BREW / HTTP/1.1\r\n\r\n")
		if got := readRaw(t, r); got.status != 400 || !strings.Contains(got.body, "Unsupported HTTP method.\n") {
			t.Fatalf("first answer %q", got.raw)
		}
		io.WriteString(c, "GET /version HTTP/1.1\r\n\r\n")
		if got := readRaw(t, r); got.status != 200 || got.body != `{"firecracker_version":"1.16.1-sim"}` {
			t.Fatalf("second answer on the same connection %q", got.raw)
		}
	})
	t.Run("100-continue", func(t *testing.T) {
		got := exchange(t, p.sock, "PUT /mmds HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}", 2)
		if got[0].raw != "HTTP/1.0 100 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n" || got[1].raw != noContent {
			t.Fatalf("answers %q", []string{got[0].raw, got[1].raw})
		}
	})
	t.Run("pipelined", func(t *testing.T) {
		got := exchange(t, p.sock, "GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 2)
		if !strings.Contains(got[0].body, "firecracker_version") || !strings.Contains(got[1].body, `"app_name":"Firecracker"`) {
			t.Fatalf("answers %q", []string{got[0].raw, got[1].raw})
		}
	})
}
