package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nexus-microvm/nexus/internal/firecracker"
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

// fakeVMM serves one VM's API socket as firecracker does, with a script:
// it answers only once it holds answerAfter requests (then each at once),
// 400 to the request at failAt, and never when silent. It records the
// paths it received; done closes when its connection has ended.
type fakeVMM struct {
	answerAfter, failAt int
	silent              bool
	mu                  sync.Mutex
	paths               []string
	done                chan struct{}
}

func (f *fakeVMM) serve(t *testing.T, sock string) {
	t.Helper()
	f.done = make(chan struct{})
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		defer close(f.done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for n := 0; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			f.mu.Lock()
			f.paths = append(f.paths, req.URL.Path)
			f.mu.Unlock()
			if f.silent || n+1 < f.answerAfter {
				continue
			}
			answers := 1
			if n+1 == f.answerAfter {
				answers = f.answerAfter // the ones held so far
			}
			for i := n + 1 - answers; i <= n; i++ {
				if i == f.failAt {
					b := `{"fault_message":"no"}`
					_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: " + itoa(len(b)) + "\r\n\r\n" + b))
					continue
				}
				_, _ = c.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n"))
			}
		}
	}()
}

func (f *fakeVMM) received() []string {
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paths
}

// A spawn's configuration calls go out in one write and their answers
// are read in turn (pipeline): a VMM that answers only once it holds all
// of them answers them. The first refusal — firecracker's, or the
// proxy's before sending — ends the list, and nothing after it runs (the
// start above all). An answer that does not come is 504 at the call's
// deadline; a caller that goes away is 499 at once.
func TestPipelinedConfiguration(t *testing.T) {
	runDir, err := os.MkdirTemp("", "nxp") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	layout := hostlayout.Layout{RunDir: runDir}
	p := newProxy(layout, 300*time.Millisecond, slog.New(slog.DiscardHandler))
	put := func(path, body string) firecracker.Call {
		return firecracker.Call{Method: http.MethodPut, Path: path, Body: []byte(body)}
	}
	machine := put("/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
	start := put("/actions", `{"action_type":"InstanceStart"}`)
	run := func(ctx context.Context, f *fakeVMM, calls func(id string) []firecracker.Call) ([]int, []string, string) {
		t.Helper()
		id := uuid.NewString()
		if err := os.MkdirAll(layout.SockDir(id), 0o750); err != nil {
			t.Fatal(err)
		}
		f.serve(t, layout.SockPath(id))
		c, err := net.Dial("unix", layout.SockPath(id))
		if err != nil {
			t.Fatal(err)
		}
		vc := newVMMConn(c)
		r := httptest.NewRequest(http.MethodPost, "/", nil).WithContext(ctx)
		res := p.runCalls(r, id, calls(id), vc)
		vc.close()
		var st []int
		var last string
		for _, x := range res {
			st = append(st, x.Status)
			last = string(x.Body)
		}
		return st, f.received(), last
	}
	ctx := context.Background()
	nic := func(id string) firecracker.Call {
		return put("/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"`+hostlayout.TapName(id)+`"}`)
	}

	st, got, _ := run(ctx, &fakeVMM{answerAfter: 4, failAt: -1}, func(id string) []firecracker.Call {
		return []firecracker.Call{machine, machine, nic(id), machine, start}
	})
	if fmt.Sprint(st) != "[204 204 204 204 204]" || fmt.Sprint(got) != "[/machine-config /machine-config /network-interfaces/eth0 /machine-config /actions]" {
		t.Fatalf("a VMM that answers once it holds the four: results %v, it got %v; want all answered, the start last", st, got)
	}

	st, got, body := run(ctx, &fakeVMM{answerAfter: 3, failAt: 1}, func(id string) []firecracker.Call {
		return []firecracker.Call{machine, machine, nic(id), start}
	})
	if fmt.Sprint(st) != "[204 400]" || !strings.Contains(body, `"fault_message":"no"`) || slices.Contains(got, "/actions") {
		t.Fatalf("firecracker refusing the second: results %v (%s), it got %v; want its 400 last, and no start", st, body, got)
	}

	st, got, body = run(ctx, &fakeVMM{answerAfter: 2, failAt: -1}, func(id string) []firecracker.Call {
		return []firecracker.Call{machine, machine, put("/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"eth0"}`), start}
	})
	if fmt.Sprint(st) != "[204 204 403]" || !strings.Contains(body, "not this VM's TAP") || fmt.Sprint(got) != "[/machine-config /machine-config]" {
		t.Fatalf("the proxy refusing the third: results %v (%s), it got %v; want the two before it sent and answered, nothing after", st, body, got)
	}

	st, _, body = run(ctx, &fakeVMM{silent: true}, func(id string) []firecracker.Call {
		return []firecracker.Call{machine, machine, start}
	})
	if fmt.Sprint(st) != "[504]" || !strings.Contains(body, "upstream_timeout") {
		t.Fatalf("a VMM that never answers: results %v (%s); want 504 for the first", st, body)
	}

	p.timeout = time.Minute
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)
	began := time.Now()
	st, _, _ = run(cctx, &fakeVMM{silent: true}, func(id string) []firecracker.Call {
		return []firecracker.Call{machine, machine, start}
	})
	if fmt.Sprint(st) != "[499]" || time.Since(began) > 30*time.Second {
		t.Fatalf("a caller gone: results %v after %s; want 499, not the call's minute", st, time.Since(began))
	}
}

// Only a new VMM's configuration, with bodies well within firecracker's
// limit, is pipelined: never its start, a PATCH, a snapshot or a GET.
func TestPipelinedCalls(t *testing.T) {
	big := make([]byte, maxPipelinedBody+1)
	for _, tc := range []struct {
		c    firecracker.Call
		want bool
	}{
		{firecracker.Call{Method: "PUT", Path: "/logger"}, true},
		{firecracker.Call{Method: "PUT", Path: "/metrics"}, true},
		{firecracker.Call{Method: "PUT", Path: "/machine-config"}, true},
		{firecracker.Call{Method: "PUT", Path: "/boot-source"}, true},
		{firecracker.Call{Method: "PUT", Path: "/drives/rootfs"}, true},
		{firecracker.Call{Method: "PUT", Path: "/network-interfaces/eth0"}, true},
		{firecracker.Call{Method: "PUT", Path: "/drives/rootfs", Body: big}, false},
		{firecracker.Call{Method: "PUT", Path: "/actions"}, false},
		{firecracker.Call{Method: "PATCH", Path: "/drives/rootfs"}, false},
		{firecracker.Call{Method: "PUT", Path: "/snapshot/load"}, false},
		{firecracker.Call{Method: "GET", Path: "/machine-config"}, false},
		{firecracker.Call{Method: "PUT", Path: "/mmds"}, false},
	} {
		if got := pipelined(tc.c); got != tc.want {
			t.Errorf("pipelined(%s %s, %d bytes) = %v; want %v", tc.c.Method, tc.c.Path, len(tc.c.Body), got, tc.want)
		}
	}
}
