package api

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkGuardrailsOverhead measures what rate limits and project
// quotas add to an authenticated create and GET (target: under 0.5 ms at
// p95). Two servers share one store and interleave in one run: "guarded"
// has rate limits on every class (high enough never to refuse) and
// creates in a project with a quota on every resource, 1,000 VMs and 200
// templates; "plain" has no limits and creates in a project without a
// quota, of the same size. The create is POST /v1/templates (the HTTP
// stack, the rate limiter, and the store transaction that checks the
// quota: the same withinQuota a VM create runs, without an agent).
func BenchmarkGuardrailsOverhead(b *testing.B) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "nexus.db")
	big := Rate{PerSecond: 1e9, Burst: 1 << 30}
	ts := newTestServerAt(b, path)
	guarded := New(func() Deps {
		d := ts.deps(auth.NewAuthenticator(ts.st, time.Minute, ts.srv.log))
		d.RateLimits = RateLimits{Read: big, Mutation: big, Create: big, AuthFailure: big}
		return d
	}())
	lim := int64(1 << 40)
	if _, err := ts.st.PutQuota(ctx, store.Quota{Project: "quota", Limits: store.QuotaLimits{VMs: &lim, VCPUs: &lim, MemMiB: &lim,
		Snapshots: &lim, SnapshotBytes: &lim, Images: &lim, Templates: &lim, Streams: &lim}}); err != nil {
		b.Fatal(err)
	}
	kernel, err := ts.st.CreateImage(ctx, store.Image{Kind: store.ImageKernel, Name: "k", HostPath: "/srv/fc/images/k"})
	if err != nil {
		b.Fatal(err)
	}
	var vmOf = map[string]string{}
	for _, project := range []string{"quota", "free"} {
		for i := range 1000 {
			vm, err := ts.st.CreateVM(ctx, store.VM{Name: fmt.Sprintf("vm-%d", i), Project: project, State: store.VMRunning, DesiredState: store.VMRunning, VCPU: 1, MemMiB: 128})
			if err != nil {
				b.Fatal(err)
			}
			vmOf[project] = vm.ID
		}
		for i := range 200 {
			if _, err := ts.st.CreateTemplate(ctx, store.Template{Name: fmt.Sprintf("seed-%d", i), Project: project}); err != nil {
				b.Fatal(err)
			}
		}
	}
	token := ts.tokens[auth.RoleAdmin]
	do := func(h http.Handler, method, path, body string, want int) time.Duration {
		req, _ := http.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		rec := newRecorder()
		s := time.Now()
		h.ServeHTTP(rec, req)
		d := time.Since(s)
		if rec.code != want {
			b.Fatalf("%s %s: %d; want %d", method, path, rec.code, want)
		}
		return d
	}
	create := func(h http.Handler, project string, i int) time.Duration {
		return do(h, "POST", "/v1/templates", fmt.Sprintf(`{"name":"t-%d","project":%q,"config":{"kernel_image_id":%q}}`, i, project, kernel.ID), http.StatusCreated)
	}
	get := func(h http.Handler, project string) time.Duration {
		return do(h, "GET", "/v1/vms/"+vmOf[project], "", http.StatusOK)
	}
	// Warm both token caches (the first use pays argon2id).
	get(ts.srv, "free")
	get(guarded, "quota")
	var cg, cp, gg, gp []time.Duration
	b.ResetTimer()
	for i := range b.N {
		cg = append(cg, create(guarded, "quota", i))
		cp = append(cp, create(ts.srv, "free", i))
		gg = append(gg, get(guarded, "quota"))
		gp = append(gp, get(ts.srv, "free"))
	}
	b.StopTimer()
	testutil.ReportLatency(b, "create-guarded", cg)
	testutil.ReportLatency(b, "create-plain", cp)
	testutil.ReportLatency(b, "get-guarded", gg)
	testutil.ReportLatency(b, "get-plain", gp)
}
