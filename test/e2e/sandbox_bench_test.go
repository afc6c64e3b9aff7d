package e2e

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// isolatedSource creates a running isolated VM (32 MiB, 16 MiB sparse
// rootfs) and snapshots it.
func isolatedSource(b *testing.B, c *cluster) (apitypes.VM, string) {
	b.Helper()
	kernel := simtest.WriteKernel(b, c.dir)
	rootfs := simtest.WriteRootfs(b, c.dir, 16)
	src, err := c.client.CreateVM(context.Background(), apitypes.CreateVMRequest{Name: "src", VMConfig: apitypes.VMConfig{
		MemMib: intp(32), KernelPath: kernel, RootfsPath: rootfs, Network: &apitypes.NetworkSpec{Mode: "isolated"}}}, true)
	if err != nil {
		b.Fatal(err)
	}
	snap, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		b.Fatal(err)
	}
	return src, snap.SnapshotID
}

// BenchmarkPoolClaim measures a claim from a warm pool end to end (API
// call → a paused VM taken out of the pool and resumed → answer), with
// firecracker-sim and real processes, p50/p95 over 50 claims. Between
// claims (not measured) the claimed VM is deleted and the pool is let
// refill, so every claim finds a warm VM.
//
//	go test -run '^$' -bench BenchmarkPoolClaim -benchtime 1x ./test/e2e/
func BenchmarkPoolClaim(b *testing.B) {
	for range b.N {
		c := newCluster(b, "sqlite", 1, "--reconcile-interval", "5s")
		ctx := context.Background()
		src, sid := isolatedSource(b, c)
		if _, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "bench", SnapshotID: sid, Size: 4}); err != nil {
			b.Fatal(err)
		}
		ready := func() {
			eventually(b, 30*time.Second, "pool ready", func() error {
				p, err := c.client.GetPool(ctx, "bench", "")
				if err != nil || p.Ready < 1 {
					return fmt.Errorf("ready %d, %v", p.Ready, err)
				}
				return nil
			})
		}
		var durs []time.Duration
		for range 50 {
			ready()
			s := time.Now()
			cl, err := c.client.ClaimPool(ctx, "bench", "", apitypes.ClaimRequest{})
			d := time.Since(s)
			if err != nil || !cl.FromPool || cl.Item.State != "running" {
				b.Fatalf("claim: %+v, %v", cl, err)
			}
			durs = append(durs, d)
			if err := c.client.DeleteVM(ctx, cl.Item.ID); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.client.DeletePool(ctx, "bench", ""); err != nil {
			b.Fatal(err)
		}
		if err := c.client.DeleteVM(ctx, src.ID); err != nil {
			b.Fatal(err)
		}
		if err := deleteSnapshot(c.client, sid); err != nil {
			b.Fatal(err)
		}
		testutil.ReportLatency(b, "claim", durs)
	}
}

// BenchmarkCloneFromSnapshot measures POST /v1/snapshots/{sid}/instantiate
// with count 1, 10 and 50 isolated clones (each in its own namespace,
// running), p50/p95 of the whole call over a few rounds, the bytes a
// clone's run dir occupies on disk (allocated blocks: the memory file is
// shared and mapped privately; the drive copies are sparse), and p50/p95
// of the bulk delete of each round's clones.
//
//	go test -run '^$' -bench BenchmarkCloneFromSnapshot -benchtime 1x ./test/e2e/
func BenchmarkCloneFromSnapshot(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("clones=%d", n), func(b *testing.B) {
			rounds := map[int]int{1: 20, 10: 5, 50: 3}[n]
			for range b.N {
				c := newCluster(b, "sqlite", 1, "--reconcile-interval", "5s")
				ctx := context.Background()
				src, sid := isolatedSource(b, c)
				var durs, delDurs []time.Duration
				var perClone int64
				for r := range rounds {
					var out apitypes.RestoredVM
					s := time.Now()
					err := c.client.Do(ctx, "POST", "/v1/snapshots/"+sid+"/instantiate", nil,
						apitypes.InstantiateSnapshotRequest{Name: fmt.Sprintf("c%d", r), Count: n}, &out)
					durs = append(durs, time.Since(s))
					if err != nil || len(out.Items) != n {
						b.Fatalf("instantiate %d: %d VMs, %v", n, len(out.Items), err)
					}
					var total int64
					for _, id := range out.IDs {
						total += allocated(b, c.agents[0].layout().VMDir(id))
					}
					perClone = total / int64(n)
					s = time.Now()
					res, err := c.client.Bulk(ctx, "delete", out.IDs)
					delDurs = append(delDurs, time.Since(s))
					if err != nil {
						b.Fatal(err)
					}
					for _, x := range res.Results {
						if !x.OK {
							b.Fatalf("delete %s: %s", x.ID, x.Error)
						}
					}
				}
				if err := c.client.DeleteVM(ctx, src.ID); err != nil {
					b.Fatal(err)
				}
				if err := deleteSnapshot(c.client, sid); err != nil {
					b.Fatal(err)
				}
				testutil.ReportLatency(b, "instantiate", durs)
				testutil.ReportLatency(b, "delete", delDurs)
				b.ReportMetric(float64(perClone), "disk-bytes/clone")
			}
		})
	}
}

// allocated sums the blocks the files under dir occupy.
func allocated(b *testing.B, dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}
