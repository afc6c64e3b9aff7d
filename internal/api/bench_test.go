package api

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkAuthOverhead measures GET /v1/vms/{id} with the real
// authenticator (a cached token) and with one that accepts any token at
// no cost, interleaved in one run, so the difference is what
// authentication adds on the hot path (target: under 1 ms at p95).
func BenchmarkAuthOverhead(b *testing.B) {
	ts := newTestServer(b)
	vm, err := ts.st.CreateVM(context.Background(), store.VM{Name: "bench", Project: "team-a", State: store.VMRunning, DesiredState: store.VMRunning, VCPU: 1, MemMiB: 128})
	if err != nil {
		b.Fatal(err)
	}
	token := ts.tokens[auth.RoleAdmin]
	noAuth := New(ts.deps(freeAuth{}))
	get := func(h http.Handler, tok string) time.Duration {
		req, _ := http.NewRequest("GET", "/v1/vms/"+vm.ID, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rec := newRecorder()
		s := time.Now()
		h.ServeHTTP(rec, req)
		d := time.Since(s)
		if rec.code != 200 {
			b.Fatalf("GET: %d", rec.code)
		}
		return d
	}
	get(ts.srv, token) // warm the token cache: the first use pays argon2id
	with := make([]time.Duration, 0, b.N)
	without := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		with = append(with, get(ts.srv, token))
		without = append(without, get(noAuth, "any"))
	}
	testutil.ReportLatency(b, "auth", with)
	testutil.ReportLatency(b, "noauth", without)
}

// recorder is a minimal ResponseWriter (httptest's keeps the body; we
// discard it to measure the handler, not the buffer).
type recorder struct {
	h    http.Header
	code int
}

func newRecorder() *recorder { return &recorder{h: http.Header{}} }

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(c int) {
	if r.code == 0 {
		r.code = c
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return io.Discard.Write(b)
}

// freeAuth takes every token for an admin's, at no cost.
type freeAuth struct{}

func (freeAuth) Authenticate(context.Context, string) (auth.Principal, error) {
	return auth.Principal{TokenID: "bench", Role: auth.RoleAdmin, Project: auth.AllProjects}, nil
}
