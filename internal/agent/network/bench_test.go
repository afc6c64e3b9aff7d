package network

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTapLifecycle measures one VM's TAP work: create (mark, attach,
// up), then delete. It reports the p50/p95 of each and the CPU (user and
// system, this process's) of a create; nothing asserts on them. Inside a
// test namespace each create also pays for a fresh OS thread to enter the
// namespace (see Network.inNS), which the agent in its own namespace does
// not.
func BenchmarkTapLifecycle(b *testing.B) {
	ctx := context.Background()
	_, nw := readyNet(b)
	name := tapName("be9c4a11e0ff")
	var creates, deletes []time.Duration
	var createCPU time.Duration
	for b.Loop() {
		cpu, start := processCPU(), time.Now()
		if err := nw.EnsureTap(ctx, name, name); err != nil {
			b.Fatal(err)
		}
		creates = append(creates, time.Since(start))
		createCPU += processCPU() - cpu
		start = time.Now()
		if err := nw.DeleteTap(ctx, name); err != nil {
			b.Fatal(err)
		}
		deletes = append(deletes, time.Since(start))
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(p*float64(len(d)-1))].Microseconds())
	}
	b.ReportMetric(pct(creates, 0.50), "create-p50-µs")
	b.ReportMetric(pct(creates, 0.95), "create-p95-µs")
	b.ReportMetric(pct(deletes, 0.50), "delete-p50-µs")
	b.ReportMetric(pct(deletes, 0.95), "delete-p95-µs")
	b.ReportMetric(float64(createCPU.Microseconds())/float64(len(creates)), "create-cpu-µs")
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTeardown100 measures Teardown of 100 TAPs (bridge kept): how
// long a host's `nexus down` or cleanup takes to delete them, and how
// many of them went in link-group batches.
func BenchmarkTeardown100(b *testing.B) {
	ctx := context.Background()
	_, nw := readyNet(b)
	var took []time.Duration
	for b.Loop() {
		b.StopTimer()
		for i := range 100 {
			id := fmt.Sprintf("%03x7ea4d0000", i)
			if err := nw.EnsureTap(ctx, tapName(id), id); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start := time.Now()
		removed, err := nw.Teardown(ctx, false)
		if err != nil || len(removed) < 100 {
			b.Fatalf("Teardown = %d removed, %v", len(removed), err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "teardown-100-p50-ms")
	b.ReportMetric(float64(nw.dels.groups)/float64(len(took)), "group-deletes/op")
}
