package network

import (
	"context"
	"slices"
	"testing"
	"time"
)

// BenchmarkTapLifecycle measures one VM's TAP work: create, attach, up,
// delete. It reports p50/p95 besides the mean; nothing asserts on them.
// Inside a test namespace each create also pays for a fresh OS thread to
// enter the namespace (see Network.inNS), which the agent in its own
// namespace does not.
func BenchmarkTapLifecycle(b *testing.B) {
	ctx := context.Background()
	_, nw := readyNet(b)
	name := tapName("be9c4a11e0ff")
	var durs []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := nw.EnsureTap(ctx, name, name); err != nil {
			b.Fatal(err)
		}
		if err := nw.DeleteTap(ctx, name); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
	}
	slices.Sort(durs)
	pct := func(p float64) float64 { return float64(durs[int(p*float64(len(durs)-1))].Microseconds()) }
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.95), "p95-µs")
}
