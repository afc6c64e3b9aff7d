package agent

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkTapCreateDelete measures POST tap + POST stop (TAP create,
// attach, up, delete) through the agent API.
func BenchmarkTapCreateDelete(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		id := uuid.NewString()
		start := time.Now()
		if _, err := e.client.Tap(ctx, id, agentapi.TapRequest{}); err != nil {
			b.Fatal(err)
		}
		if err := e.client.Stop(ctx, id, agentapi.StopRequest{}); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
	}
	testutil.ReportLatency(b, "tap-create-delete", durs)
}

// BenchmarkSpawnToReady measures POST spawn until the VMM's socket accepts
// connections, then stops it (not timed).
func BenchmarkSpawnToReady(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	durs := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		id := uuid.NewString()
		start := time.Now()
		if _, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{}); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
		b.StopTimer()
		if err := e.client.Delete(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	testutil.ReportLatency(b, "spawn-ready", durs)
}

// BenchmarkProxyOverhead measures GET /machine-config through the agent's
// proxy and straight on the socket, in one run, so the difference is the
// proxy's cost.
func BenchmarkProxyOverhead(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	id := uuid.NewString()
	if _, err := e.client.Spawn(ctx, id, agentapi.SpawnRequest{}); err != nil {
		b.Fatal(err)
	}
	defer e.client.Delete(ctx, id)
	via := e.client.Firecracker(id)
	direct := firecracker.NewUnix(e.layout.SockPath(id))
	defer direct.CloseIdleConnections()
	viaD := make([]time.Duration, 0, b.N)
	dirD := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		s := time.Now()
		if _, err := direct.GetMachineConfig(ctx); err != nil {
			b.Fatal(err)
		}
		dirD = append(dirD, time.Since(s))
		s = time.Now()
		if _, err := via.GetMachineConfig(ctx); err != nil {
			b.Fatal(err)
		}
		viaD = append(viaD, time.Since(s))
	}
	testutil.ReportLatency(b, "direct", dirD)
	testutil.ReportLatency(b, "proxied", viaD)
}
