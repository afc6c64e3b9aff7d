package nexus_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/agenttest"
	"github.com/nexus-microvm/nexus/internal/app"
	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// fleet is a real manager on SQLite with a hollow agent (no root needed).
type fleet struct {
	m      *app.Manager
	admin  string
	kernel string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	dir, err := os.MkdirTemp("", "nxsdk")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	join := strings.Repeat("j", 32)
	m, err := app.StartManager(ctx, app.ManagerOptions{Listen: "127.0.0.1:0", DatabaseURL: "sqlite://" + filepath.Join(dir, "nexus.db"),
		Mode: "dev", JoinToken: join, ReconcileInterval: time.Hour}, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); m.Wait(); os.RemoveAll(dir) })
	agenttest.Start(t, agenttest.Options{Token: join, Manager: m.URL()})
	admin, _, err := app.Bootstrap(ctx, m.Store, "sdk-test")
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{m: m, admin: admin, kernel: simtest.WriteKernel(t, dir)}
	c := nexus.New(m.URL(), admin)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := c.Hosts(ctx)
		if err == nil && len(l.Items) == 1 && l.Items[0].State == "ready" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hollow agent did not register: %v %+v", err, l)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f
}

func (f *fleet) token(t *testing.T, role auth.Role) string {
	t.Helper()
	secret, _, err := auth.Issue(context.Background(), f.m.Store, "", string(role)+"-user", role, "default")
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func (f *fleet) vm(name string) apitypes.CreateVMRequest {
	return apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: f.kernel}}
}

// Pages of 100 over 250 VMs: ListVMs hands out cursors, VMs iterates over
// all of them once, newest first.
func TestPagination(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	c := nexus.New(f.m.URL(), f.admin)
	no := false
	for i := range 250 {
		req := f.vm(fmt.Sprintf("p-%03d", i))
		req.Start = &no
		if _, err := c.CreateVM(ctx, req, false); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	o := nexus.ListVMsOptions{Limit: 100}
	for {
		l, err := c.ListVMs(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(l.Items))
		if l.NextCursor == "" {
			break
		}
		o.Cursor = l.NextCursor
	}
	if fmt.Sprint(sizes) != "[100 100 50]" {
		t.Fatalf("pages of %v; want [100 100 50]", sizes)
	}
	seen := map[string]bool{}
	prev := "p-999"
	for vm, err := range c.VMs(ctx, nexus.ListVMsOptions{Limit: 100}) {
		if err != nil {
			t.Fatal(err)
		}
		if seen[vm.ID] || vm.Name >= prev {
			t.Fatalf("%s out of order or twice (after %s)", vm.Name, prev)
		}
		seen[vm.ID], prev = true, vm.Name
	}
	if len(seen) != 250 {
		t.Fatalf("the iterator yielded %d VMs; want 250", len(seen))
	}
	// Breaking out of the loop stops the iterator.
	n := 0
	for range c.VMs(ctx, nexus.ListVMsOptions{Limit: 10}) {
		if n++; n == 15 {
			break
		}
	}
	if n != 15 {
		t.Fatalf("stopped after %d", n)
	}
}

// Errors come back as *APIError with the contract's code, status,
// suggestion and request id.
func TestTypedErrors(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	c := nexus.New(f.m.URL(), f.admin)
	if _, err := c.CreateVM(ctx, f.vm("taken"), true); err != nil {
		t.Fatal(err)
	}
	viewer := nexus.New(f.m.URL(), f.token(t, auth.RoleViewer))
	wrong := nexus.New(f.m.URL(), "nxs_not-a-token")
	bad := f.vm("bad name!")
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		code   string
	}{
		{"400 invalid name", func() error { _, err := c.CreateVM(ctx, bad, true); return err }, 400, "invalid_request"},
		{"401 wrong token", func() error { _, err := wrong.Hosts(ctx); return err }, 401, "unauthorized"},
		{"403 viewer deletes", func() error { return viewer.DeleteVM(ctx, "taken") }, 403, "forbidden"},
		{"404 unknown VM", func() error { _, err := c.GetVM(ctx, "nope"); return err }, 404, "not_found"},
		{"409 name taken", func() error { _, err := c.CreateVM(ctx, f.vm("taken"), true); return err }, 409, "name_taken"},
	} {
		err := tc.call()
		var ae *nexus.APIError
		if !errors.As(err, &ae) {
			t.Errorf("%s: %T %v; want *nexus.APIError", tc.name, err, err)
			continue
		}
		if ae.Status != tc.status || ae.Code != tc.code || ae.RequestID == "" || ae.Message == "" {
			t.Errorf("%s: %+v; want status %d, code %s, a message and a request id", tc.name, ae, tc.status, tc.code)
		}
		if nexus.StatusOf(err) != tc.status || nexus.CodeOf(err) != tc.code {
			t.Errorf("%s: StatusOf/CodeOf = %d/%s", tc.name, nexus.StatusOf(err), nexus.CodeOf(err))
		}
	}
	if _, err := c.CreateVM(ctx, f.vm("taken"), true); !nexus.IsConflict(err) {
		t.Errorf("IsConflict(%v) = false", err)
	}
	if _, err := c.GetVM(ctx, "nope"); !nexus.IsNotFound(err) {
		t.Errorf("IsNotFound(%v) = false", err)
	}
}

// The manager's stream cap answers 429 with Retry-After; the SDK returns
// it as an *APIError carrying RetryAfter, after its retries.
func TestTooManyStreams(t *testing.T) {
	f := newFleet(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := nexus.New(f.m.URL(), f.admin, nexus.WithRetry(nexus.RetryPolicy{Attempts: 1}))
	vm, err := c.CreateVM(ctx, f.vm("chatty"), true)
	if err != nil {
		t.Fatal(err)
	}
	var streams []*nexus.LogStream
	defer func() {
		for _, s := range streams {
			s.Close()
		}
	}()
	var last error
	for range 1000 {
		s, err := c.StreamLogs(ctx, vm.ID, nexus.StreamOptions{})
		if err != nil {
			last = err
			break
		}
		streams = append(streams, s)
	}
	var ae *nexus.APIError
	if !errors.As(last, &ae) || ae.Status != 429 || ae.RetryAfter <= 0 {
		t.Fatalf("after %d streams: %v; want a 429 with Retry-After", len(streams), last)
	}
	t.Logf("the manager relayed %d streams, then: %s (retry after %s)", len(streams), ae.Message, ae.RetryAfter)
}

// A log stream whose connection breaks reconnects and resumes after the
// last line it delivered: the lines read equal the log, none lost, none
// twice.
func TestStreamResumes(t *testing.T) {
	f := newFleet(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	direct := nexus.New(f.m.URL(), f.admin)
	vm, err := direct.CreateVM(ctx, f.vm("streamed"), true)
	if err != nil {
		t.Fatal(err)
	}
	p := newCutProxy(t, f.m.Addr)
	c := nexus.New("http://"+p.addr, f.admin)
	s, err := c.StreamLogs(ctx, vm.ID, nexus.StreamOptions{Source: "fc", Tail: 10000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lines := make(chan string, 1000)
	go func() {
		for s.Next() {
			lines <- s.Line().Text
		}
		close(lines)
	}()
	var got []string
	read := func(until func() bool) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for !until() {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the stream ended: %v", s.Err())
				}
				got = append(got, l)
			case <-deadline:
				t.Fatalf("no more lines after %d", len(got))
			}
		}
	}
	logLen := func() int {
		l, err := direct.Logs(ctx, vm.ID, "fc", 10000)
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Lines)
	}
	// Each pause and resume writes firecracker log lines; the connection
	// is cut between rounds.
	for round := range 3 {
		if err := direct.PauseVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if err := direct.ResumeVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		want := logLen()
		read(func() bool { return len(got) >= want })
		if round < 2 {
			p.cut()
		}
	}
	full, err := direct.Logs(ctx, vm.ID, "fc", 10000)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "\n") != strings.Join(full.Lines, "\n") {
		t.Fatalf("streamed lines differ from the log:\n--- streamed (%d)\n%s\n--- log (%d)\n%s", len(got), strings.Join(got, "\n"), len(full.Lines), strings.Join(full.Lines, "\n"))
	}
	if p.conns() < 3 {
		t.Fatalf("only %d connections: the stream did not reconnect", p.conns())
	}
	if s.LastEventID() == "" {
		t.Fatal("no last event id")
	}
}

// cutProxy forwards TCP to a manager and can cut every connection, as a
// flaky network would.
type cutProxy struct {
	addr  string
	mu    sync.Mutex
	live  []net.Conn
	count int
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.cut(); wg.Wait() })
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.live = append(p.live, in, out)
			p.count++
			p.mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(out, in); out.Close() })
			wg.Go(func() { _, _ = io.Copy(in, out); in.Close() })
		}
	})
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.live {
		c.Close()
	}
	p.live = nil
}

func (p *cutProxy) conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// Idempotent calls are retried on 503 (honouring Retry-After) and on a
// refused connection; a POST is not retried after it may have arrived.
func TestRetries(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls[r.Method]++
		n := calls[r.Method]
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n < 3 {
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(502)
			_, _ = w.Write([]byte(`{"error":"agent_unavailable","status":502,"request_id":"r"}`))
			return
		}
		_, _ = w.Write([]byte(`{"items":[]}`))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := nexus.New("http://"+ln.Addr().String(), "t", nexus.WithRetry(nexus.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 10 * time.Millisecond}))
	if _, err := c.Hosts(context.Background()); err != nil {
		t.Fatalf("GET after two 502s: %v", err)
	}
	if calls["GET"] != 3 {
		t.Fatalf("GET tried %d times; want 3", calls["GET"])
	}
	if _, err := c.CreateVM(context.Background(), apitypes.CreateVMRequest{Name: "x"}, false); nexus.StatusOf(err) != 502 || calls["POST"] != 1 {
		t.Fatalf("POST: %v after %d tries; want the 502 after 1", err, calls["POST"])
	}
	// Nothing listens: refused before sending, so even a POST is retried,
	// and the error says where it tried.
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln2.Addr().String()
	ln2.Close()
	start := time.Now()
	_, err = nexus.New("http://"+addr, "t", nexus.WithRetry(nexus.RetryPolicy{Attempts: 3, Base: 20 * time.Millisecond, Max: 50 * time.Millisecond})).
		CreateVM(context.Background(), apitypes.CreateVMRequest{Name: "x"}, false)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the manager at http://"+addr) || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("refused: %v after %s", err, time.Since(start))
	}
}
