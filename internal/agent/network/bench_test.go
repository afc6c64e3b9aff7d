package network

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
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
//
//	go test -run '^$' -bench 'Teardown100|RemoveIsolated50' -benchtime 5x ./internal/agent/network/ (root)
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

// BenchmarkRemoveIsolated50 measures RemoveIsolated of 50 isolated VMs'
// networks (namespace, veth pair, TAP inside): how long `nexus down` takes
// to remove them, and how many link-group deletions that took.
//
//	go test -run '^$' -bench RemoveIsolated50 -benchtime 5x ./internal/agent/network/ (root)
func BenchmarkRemoveIsolated50(b *testing.B) {
	ctx := context.Background()
	_, nw := readyNet(b)
	l := hostlayout.Layout{RunDir: b.TempDir()}
	b.Cleanup(func() { _, _ = nw.RemoveIsolated(ctx, l) }) // a failed run's namespaces
	var took []time.Duration
	groups := 0
	for b.Loop() {
		b.StopTimer()
		for i := range 50 {
			id := fmt.Sprintf("%03xbeef0-0000-4000-8000-000000000000", i)
			if err := os.MkdirAll(l.VMDir(id), 0o750); err != nil {
				b.Fatal(err)
			}
			c := Isolated{VMID: id, NSPath: l.NetNSPath(id), Tap: tapName(id), HostAddr: netip.AddrFrom4([4]byte{172, 20, 1, byte(i + 2)}),
				Guest: netip.MustParseAddr("192.168.127.2"), GuestGateway: mustPrefix("192.168.127.1/30")}
			if err := nw.EnsureIsolated(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
		g0 := nw.dels.groups
		b.StartTimer()
		start := time.Now()
		removed, err := nw.RemoveIsolated(ctx, l)
		if err != nil || len(removed) != 50 {
			b.Fatalf("RemoveIsolated = %d removed, %v", len(removed), err)
		}
		took = append(took, time.Since(start))
		groups += nw.dels.groups - g0
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "remove-50-p50-ms")
	b.ReportMetric(float64(groups)/float64(len(took)), "group-deletes/op")
}
