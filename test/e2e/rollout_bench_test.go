package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// BenchmarkPoolRollout measures the time to roll a warm pool of
// template VMs (NEXUS_BENCH_POOL_SIZE, default 100) to a new template
// version with max_parallel 10, canary 1 and min_healthy_time 0, from the
// POST to the rollout's succeeded state, with firecracker-sim and real
// processes on one host; it also reports the lowest ready count seen and
// the manager's peak RSS.
//
//	go test -run '^$' -bench BenchmarkPoolRollout -benchtime 1x ./test/e2e/
func BenchmarkPoolRollout(b *testing.B) {
	size := 100
	if v, err := strconv.Atoi(os.Getenv("NEXUS_BENCH_POOL_SIZE")); err == nil && v > 0 && v <= 100 {
		size = v
	}
	for range b.N {
		c := newCluster(b, "sqlite", 1, "--reconcile-interval", "1s", "--vcpu-overcommit", "128", "--mem-overcommit", "16")
		ctx := context.Background()
		dir := c.agents[0].imagesDir(b)
		os.WriteFile(filepath.Join(dir, "vmlinux"), simtest.KernelELF(), 0o644)
		if _, err := c.client.CreateImage(ctx, apitypes.CreateImageRequest{Kind: "kernel", Name: "vmlinux", HostPath: "vmlinux", Project: "*"}); err != nil {
			b.Fatal(err)
		}
		cfg := func(mem int) apitypes.TemplateConfig {
			return apitypes.TemplateConfig{Vcpu: intp(1), MemMib: intp(mem), KernelImageID: "vmlinux"}
		}
		if _, err := c.client.CreateTemplate(ctx, apitypes.CreateTemplateRequest{Name: "bench", Config: cfg(32)}); err != nil {
			b.Fatal(err)
		}
		pool, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "bench", TemplateID: "bench", Size: size})
		if err != nil {
			b.Fatal(err)
		}
		eventually(b, 10*time.Minute, "pool full", func() error {
			p, err := c.client.GetPool(ctx, pool.ID, "")
			if err != nil || p.Ready != size {
				return fmt.Errorf("ready %d, %v", p.Ready, err)
			}
			return nil
		})
		if _, err := c.client.UpdateTemplate(ctx, "bench", "", apitypes.UpdateTemplateRequest{Config: cfg(48)}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := c.client.StartRollout(ctx, "bench", "", apitypes.RolloutRequest{TemplateVersion: 2, Canary: intp(1), MaxParallel: 10}); err != nil {
			b.Fatal(err)
		}
		low := size
		eventually(b, 20*time.Minute, "rollout succeeded", func() error {
			p, err := c.client.GetPool(ctx, pool.ID, "")
			if err == nil {
				low = min(low, p.Ready)
			}
			r, err := c.client.GetRollout(ctx, "bench", "")
			if err != nil || r.State != "succeeded" {
				return fmt.Errorf("%s %s: %d new, %d old, %v", r.State, r.Phase, r.New, r.Old, err)
			}
			return nil
		})
		took := time.Since(start)
		mgrRSS := vmHWM(c.mgr.cmd.Process.Pid)
		steps := rolloutSteps(b, c, pool.ID, start)
		if err := c.client.DeletePool(ctx, pool.ID, ""); err != nil {
			b.Fatal(err)
		}
		eventually(b, 5*time.Minute, "pool VMs deleted", func() error {
			if n := len(poolVMs(b, c, pool.ID)); n != 0 {
				return fmt.Errorf("%d left", n)
			}
			return nil
		})
		b.ReportMetric(float64(size), "vms")
		b.ReportMetric(took.Seconds(), "rollout-s")
		b.ReportMetric(float64(low), "min-ready")
		b.ReportMetric(float64(mgrRSS)/1024, "manager-peak-rss-MiB")
		if len(steps) > 0 {
			b.ReportMetric(pct(steps, 50), "step-p50-ms")
			b.ReportMetric(pct(steps, 95), "step-p95-ms")
		}
	}
}

// rolloutSteps reads the rollout's audit rows of the system (each written
// as a step, promote or the end completes) and returns the time between
// one and the next, from the start: how long each step took. Each is
// logged with what it made and deleted.
func rolloutSteps(b *testing.B, c *cluster, poolID string, start time.Time) []time.Duration {
	var out []time.Duration
	last := start
	for e, err := range c.client.AuditEntries(context.Background(), nexus.AuditOptions{ResourceID: poolID}) {
		if err != nil {
			b.Fatal(err)
		}
		if !strings.HasPrefix(e.Action, "pool.rollout.") || e.At.Before(start) {
			continue
		}
		var after struct{ Made, Deleted []string }
		_ = json.Unmarshal(e.After, &after)
		d := e.At.Sub(last)
		last = e.At
		out = append(out, d)
		b.Logf("%-26s +%8.1f ms  made %2d  deleted %2d", e.Action, float64(d.Microseconds())/1000, len(after.Made), len(after.Deleted))
	}
	return out
}
