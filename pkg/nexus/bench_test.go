package nexus_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// BenchmarkOverhead is what the SDK adds per call over plain net/http
// doing the same GET and decode (target: < 0.1 ms). Both run against one
// local server answering a VM, interleaved, and report p50 and p95.
func BenchmarkOverhead(b *testing.B) {
	vm := apitypes.VMItem{Item: apitypes.VM{ID: "0b7e0c1e-5c3f-4c55-9d38-1f0e6d2f7a10", Name: "web", State: "running", Vcpu: 2, MemMib: 512,
		Tags: map[string]string{"team": "ci"}, CreatedAt: time.Now(), UpdatedAt: time.Now()}}
	body, _ := json.Marshal(vm)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer ts.Close()
	ctx := context.Background()
	raw := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	c := nexus.New(ts.URL, "nxs_token")
	rawGet := func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/v1/vms/web", nil)
		req.Header.Set("Authorization", "Bearer nxs_token")
		resp, err := raw.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		var it apitypes.VMItem
		return json.Unmarshal(b, &it)
	}
	sdkGet := func() error { _, err := c.GetVM(ctx, "web"); return err }
	var rawD, sdkD []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for _, x := range []struct {
			f func() error
			d *[]time.Duration
		}{{rawGet, &rawD}, {sdkGet, &sdkD}} {
			s := time.Now()
			if err := x.f(); err != nil {
				b.Fatal(err)
			}
			*x.d = append(*x.d, time.Since(s))
		}
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(float64(len(d)-1)*p)].Microseconds())
	}
	b.ReportMetric(pct(rawD, .5), "raw-p50-µs")
	b.ReportMetric(pct(sdkD, .5), "sdk-p50-µs")
	b.ReportMetric(pct(rawD, .95), "raw-p95-µs")
	b.ReportMetric(pct(sdkD, .95), "sdk-p95-µs")
	b.ReportMetric(pct(sdkD, .5)-pct(rawD, .5), "added-p50-µs")
}
