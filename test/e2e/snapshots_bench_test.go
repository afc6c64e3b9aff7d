package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkSnapshot measures, with firecracker-sim and real processes,
// snapshot create (pause → drive copy → state and memory → resume → catalog)
// and restore to running (TAP, fresh VMM, drive copy, load, running) at
// 128 MiB and 1 GiB of guest memory, p50/p95 over 20 rounds, and what the
// memory file occupies on disk (firecracker-sim writes it sparse; a real
// firecracker Full snapshot writes every page).
//
//	go test -run '^$' -bench BenchmarkSnapshot -benchtime 1x ./test/e2e/
func BenchmarkSnapshot(b *testing.B) {
	for _, mem := range []int{128, 1024} {
		b.Run(fmt.Sprintf("mem=%dMiB", mem), func(b *testing.B) {
			const rounds = 20
			for range b.N {
				c := newCluster(b, "sqlite", 1)
				ctx := context.Background()
				src, _ := snapVM(b, c, "src", mem, 0)
				var createD, restoreD []time.Duration
				var memSize, memAlloc, total, totalAlloc int64
				for i := range rounds {
					s := time.Now()
					snap, err := createSnapshot(c.client, src.ID, nil)
					if err != nil {
						b.Fatal(err)
					}
					createD = append(createD, time.Since(s))
					for _, f := range snap.Files {
						if filepath.Base(f.Path) == "mem" {
							memSize, memAlloc = f.Size, f.AllocatedBytes
						}
					}
					total, totalAlloc = snap.Size, snap.AllocatedBytes
					s = time.Now()
					r, err := restoreSnapshot(c.client, snap.SnapshotID, fmt.Sprintf("clone-%d", i))
					if err != nil || r.State != "running" {
						b.Fatalf("restore: %+v, %v", r, err)
					}
					restoreD = append(restoreD, time.Since(s))
					if err := c.client.DeleteVM(ctx, r.ID); err != nil {
						b.Fatal(err)
					}
					if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
						b.Fatal(err)
					}
				}
				if err := c.client.DeleteVM(ctx, src.ID); err != nil {
					b.Fatal(err)
				}
				c.assertNoSnapshotLeaks()
				testutil.ReportLatency(b, "create", createD)
				testutil.ReportLatency(b, "restore", restoreD)
				b.ReportMetric(float64(memSize)/(1<<20), "mem-file-MiB")
				b.ReportMetric(float64(memAlloc), "mem-allocated-bytes")
				b.ReportMetric(float64(total)/(1<<20), "snapshot-MiB")
				b.ReportMetric(float64(totalAlloc), "snapshot-allocated-bytes")
			}
		})
	}
}
