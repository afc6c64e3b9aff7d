package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// A spawn's carried calls go over the connection that found the socket
// up: several calls on that one connection, firecracker's status, body
// and headers relayed as the transport relays them; after a connection
// that ends, the next call is not sent on it (the caller uses the
// transport); an answer that does not come is 504 at the call's deadline;
// a caller that goes away is 499 at once.
func TestRelayOnSpawnConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fc.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	quiet, dropped := make(chan struct{}), make(chan struct{})
	defer close(quiet)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					switch req.URL.Path {
					case "/machine-config":
						_, _ = c.Write([]byte("HTTP/1.1 204 No Content\r\nKeep-Alive: timeout=5\r\n\r\n"))
					case "/boot-source":
						b := `{"fault_message":"no kernel"}`
						_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(b)) + "\r\n\r\n" + b))
					case "/logger":
						_, _ = c.Write([]byte("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"))
						return
					case "/metrics":
						<-quiet // never answered
						return
					case "/vsock": // answered, then the connection ends unsaid
						_, _ = c.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
						c.Close()
						close(dropped)
						return
					}
				}
			}()
		}
	}()
	p := newProxy(hostlayout.Layout{RunDir: t.TempDir()}, 200*time.Millisecond, slog.New(slog.DiscardHandler))
	dial := func() *vmmConn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		return newVMMConn(c)
	}
	call := func(ctx context.Context, vc *vmmConn, path string) (*httptest.ResponseRecorder, bool) {
		out, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://localhost"+path, strings.NewReader(`{}`))
		out.GetBody = func() (rc io.ReadCloser, err error) { return io.NopCloser(strings.NewReader(`{}`)), nil }
		rec := httptest.NewRecorder()
		return rec, p.relayOn(vc, rec, out)
	}
	ctx := context.Background()
	vc := dial()
	defer vc.close()
	for range 3 {
		if rec, sent := call(ctx, vc, "/machine-config"); !sent || rec.Code != 204 || rec.Header().Get("Keep-Alive") != "" {
			t.Fatalf("machine-config: sent %v, %d %v %q; want 204 without hop-by-hop headers", sent, rec.Code, rec.Header(), rec.Body)
		}
	}
	rec, sent := call(ctx, vc, "/boot-source")
	var fault struct {
		FaultMessage string `json:"fault_message"`
	}
	if !sent || rec.Code != 400 || rec.Header().Get("Content-Type") != "application/json" || json.Unmarshal(rec.Body.Bytes(), &fault) != nil || fault.FaultMessage != "no kernel" {
		t.Fatalf("boot-source: sent %v, %d %q; want firecracker's 400 and its body", sent, rec.Code, rec.Body)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections for five calls; want the one", n)
	}
	if rec, sent := call(ctx, vc, "/logger"); !sent || rec.Code != 204 {
		t.Fatalf("logger: sent %v, %d; want 204", sent, rec.Code)
	}
	if rec, sent := call(ctx, vc, "/machine-config"); sent || rec.Code != 200 || rec.Body.Len() != 0 {
		t.Fatalf("after the VMM closed the connection: sent %v, wrote %d %q; want nothing sent, nothing written", sent, rec.Code, rec.Body)
	}

	// A connection that ended without saying so: the next call cannot be
	// written, nothing is answered, and its body is there again for the
	// transport.
	vcd := dial()
	defer vcd.close()
	if rec, sent := call(ctx, vcd, "/vsock"); !sent || rec.Code != 204 {
		t.Fatalf("vsock: sent %v, %d; want 204", sent, rec.Code)
	}
	<-dropped
	out, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://localhost/machine-config", strings.NewReader(`{"vcpu_count":1}`))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(`{"vcpu_count":1}`)), nil }
	rec = httptest.NewRecorder()
	if p.relayOn(vcd, rec, out) || rec.Body.Len() != 0 {
		t.Fatalf("on a connection gone: sent, wrote %d %q; want nothing sent, nothing written", rec.Code, rec.Body)
	}
	if b, err := io.ReadAll(out.Body); err != nil || string(b) != `{"vcpu_count":1}` {
		t.Fatalf("the call's body after the failed write: %q, %v; want it whole again", b, err)
	}

	vc2 := dial()
	defer vc2.close()
	start := time.Now()
	rec, sent = call(ctx, vc2, "/metrics")
	if !sent || rec.Code != http.StatusGatewayTimeout || !strings.Contains(rec.Body.String(), "upstream_timeout") {
		t.Fatalf("an answer that does not come: sent %v, %d %q after %s; want 504 upstream_timeout at the deadline", sent, rec.Code, rec.Body, time.Since(start))
	}

	// The connection's deadline and the context's end fire together: the
	// hook that ends the wait must not touch a connection closed meanwhile
	// (this crashed the agent once in a few thousand such calls).
	for range 300 {
		vcx := dial()
		tctx, cancel := context.WithTimeout(ctx, time.Millisecond)
		// Not sent (the deadline came before the write) or answered 499/504.
		rec, sent := call(tctx, vcx, "/metrics")
		if sent && rec.Code != 499 && rec.Code != http.StatusGatewayTimeout || !sent && rec.Body.Len() != 0 {
			t.Fatalf("a call at its deadline: sent %v, %d %q", sent, rec.Code, rec.Body)
		}
		cancel()
		vcx.close()
	}

	// A call that may take a minute, whose caller leaves at once.
	p.timeout = time.Minute
	vc3 := dial()
	defer vc3.close()
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	start = time.Now()
	rec, sent = call(cctx, vc3, "/metrics")
	if !sent || rec.Code != 499 || time.Since(start) > 30*time.Second {
		t.Fatalf("a caller gone: sent %v, %d %q after %s; want 499, not the call's minute", sent, rec.Code, rec.Body, time.Since(start))
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
