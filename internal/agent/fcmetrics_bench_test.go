package agent

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// fullRecord is a record firecracker-sim wrote (every group, one line), so
// parsing costs what it costs with real files.
func fullRecord(b testing.TB) string {
	rec, err := os.ReadFile(filepath.Join("testdata", "metrics-record.json"))
	if err != nil {
		b.Fatal(err)
	}
	return string(rec)
}

// BenchmarkAgentScrape1000VMs measures GET /metrics of an agent with 1,000
// live VMs, each of whose metrics file gained one record since the last
// scrape (firecracker flushes once a minute; Prometheus scrapes every
// 15-60 s). Target: under 100 ms.
func BenchmarkAgentScrape1000VMs(b *testing.B) {
	dir := b.TempDir()
	layout := hostlayout.Layout{RunDir: dir}
	rec := fullRecord(b)
	var live []vmmRef
	files := make([]*os.File, 0, 1000)
	for range 1000 {
		id := uuid.NewString()
		p := layout.MetricsPath(id)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		for range 60 { // an hour of history
			f.WriteString(rec)
		}
		files = append(files, f)
		live = append(live, vmmRef{VMID: id, PID: os.Getpid()})
	}
	m := newFCMetrics(layout, func() []vmmRef { return live })
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	scrape := func() time.Duration {
		req, _ := newGet("/metrics")
		w := &discard{h: map[string][]string{}}
		start := time.Now()
		h.ServeHTTP(w, req)
		return time.Since(start)
	}
	first := scrape()
	idle := scrape() // no file grew: one stat per VM
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for _, f := range files {
			f.WriteString(rec)
		}
		b.StartTimer()
		durs = append(durs, scrape())
	}
	testutil.ReportLatency(b, "scrape", durs)
	b.ReportMetric(float64(first.Milliseconds()), "first-scrape-ms")
	b.ReportMetric(float64(idle.Microseconds())/1000, "idle-scrape-ms")
}

type discard struct{ h map[string][]string }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return io.Discard.Write(p) }
func (d *discard) WriteHeader(int)             {}

func newGet(path string) (*http.Request, error) { return http.NewRequest("GET", path, nil) }
