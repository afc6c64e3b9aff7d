package e2e

import (
	"context"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
)

// BenchmarkSecurity measures what jail mode and mutual TLS add to a VM's
// create→running, on a manager and one agent with firecracker-sim: 100 VMs
// created 10 at a time (by default), four ways — plain, jail, mutual TLS, both. The
// four run in turn, NEXUS_BENCH_ROUNDS times (default 3), so a load that
// comes and goes on the machine spreads over all of them; each reports the
// median over the rounds of create→running p50/p95 and of the agent's
// spawn step (VMM process to API socket, from the boot event), and fails
// on leftovers.
//
//	go test -run '^$' -bench BenchmarkSecurity -benchtime 1x ./test/e2e/
//
// NEXUS_BENCH_VMS changes the number of VMs, NEXUS_BENCH_BATCH how many
// are created at once (1: each alone, the cost without contention).
func BenchmarkSecurity(b *testing.B) {
	total, rounds, batch := envInt("NEXUS_BENCH_VMS", 100), envInt("NEXUS_BENCH_ROUNDS", 3), envInt("NEXUS_BENCH_BATCH", 10)
	type config struct {
		name      string
		jail, tls bool
	}
	configs := []config{{"plain", false, false}, {"jail", true, false}, {"tls", false, true}, {"jail+tls", true, true}}
	type result struct{ create, spawn []time.Duration }
	results := map[string][]result{}
	for r := range rounds {
		for i, cfg := range configs {
			env := []string{"FC_JAIL=off"}
			if cfg.jail {
				env = []string{"FC_JAIL=on", "FC_JAIL_UID_BASE=" + strconv.Itoa(2_141_000_000+i*100_000), "FC_JAIL_UID_COUNT=10000"}
			}
			c := newClusterWith(b, clusterOpts{engine: "sqlite", agents: 1, tls: cfg.tls, env: env})
			kernel := simtest.WriteKernel(b, c.dir)
			createD, ids := createMany(b, c.client, kernel, "sec", total, batch, 64)
			if b.Failed() {
				b.FailNow()
			}
			spawnD := spawnDurations(b, c, ids)
			deleteAll(b, c.client, ids, batch)
			if n := countLeftovers(c, ids); n != 0 {
				b.Fatalf("%s, round %d: %d leftovers", cfg.name, r+1, n)
			}
			c.assertHostsEmpty()
			results[cfg.name] = append(results[cfg.name], result{createD, spawnD})
			c.cleanup()
		}
	}
	for _, cfg := range configs {
		b.Run(cfg.name, func(b *testing.B) {
			var c50, c95, s50, s95 []float64
			for _, r := range results[cfg.name] {
				c50, c95 = append(c50, pct(r.create, 50)), append(c95, pct(r.create, 95))
				s50, s95 = append(s50, pct(r.spawn, 50)), append(s95, pct(r.spawn, 95))
			}
			b.ReportMetric(median(c50), "create-running-p50-ms")
			b.ReportMetric(median(c95), "create-running-p95-ms")
			b.ReportMetric(median(s50), "spawn-p50-ms")
			b.ReportMetric(median(s95), "spawn-p95-ms")
			b.ReportMetric(float64(len(results[cfg.name])), "rounds")
		})
	}
}

// pct is the p-th percentile of ds in milliseconds.
func pct(ds []time.Duration, p int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[min(len(s)-1, len(s)*p/100)].Microseconds()) / 1000
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

var spawnStep = regexp.MustCompile(`spawn vmm ([0-9.]+) ms`)

// spawnDurations reads each VM's boot event for the spawn step's duration.
func spawnDurations(tb testing.TB, c *cluster, ids []string) []time.Duration {
	tb.Helper()
	var out []time.Duration
	for _, id := range ids {
		ev, err := c.client.Events(context.Background(), id)
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range ev.Items {
			if m := spawnStep.FindStringSubmatch(e.Message); m != nil {
				ms, _ := strconv.ParseFloat(m[1], 64)
				out = append(out, time.Duration(ms*float64(time.Millisecond)))
				break
			}
		}
	}
	if len(out) != len(ids) {
		tb.Fatalf("spawn step found in %d of %d boot events", len(out), len(ids))
	}
	return out
}
