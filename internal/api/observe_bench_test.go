package api

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkMetricsScrape1000VMs measures GET /metrics of a manager whose
// store holds 1,000 VMs on 10 hosts in 20 projects (target: under 100 ms).
func BenchmarkMetricsScrape1000VMs(b *testing.B) {
	ts := newTestServer(b)
	ctx := context.Background()
	var hosts []string
	for i := range 10 {
		h, err := ts.st.UpsertHost(ctx, store.HostRegistration{Name: fmt.Sprintf("host-%d", i), Addr: fmt.Sprintf("http://10.0.0.%d:9090", i+1),
			Capacity: store.Resources{VCPU: 128, MemMiB: 262144}, VMM: "1.12.0-sim"})
		if err != nil {
			b.Fatal(err)
		}
		hosts = append(hosts, h.ID)
	}
	states := []store.VMState{store.VMRunning, store.VMRunning, store.VMRunning, store.VMPaused, store.VMStopped}
	for i := range 1000 {
		st := states[i%len(states)]
		if _, err := ts.st.CreateVM(ctx, store.VM{Name: fmt.Sprintf("vm-%d", i), Project: fmt.Sprintf("p%d", i%20), HostID: hosts[i%len(hosts)],
			State: st, DesiredState: st, VCPU: 1, MemMiB: 128}); err != nil {
			b.Fatal(err)
		}
	}
	scrape := func() time.Duration {
		req, _ := http.NewRequest("GET", "/metrics", nil)
		rec := newRecorder()
		start := time.Now()
		ts.srv.ServeHTTP(rec, req)
		d := time.Since(start)
		if rec.code != 200 {
			b.Fatalf("/metrics: %d", rec.code)
		}
		return d
	}
	scrape()
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		durs = append(durs, scrape())
	}
	testutil.ReportLatency(b, "scrape", durs)
}
