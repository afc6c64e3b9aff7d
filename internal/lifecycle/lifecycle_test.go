package lifecycle

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestGroupJoinsAndCloses(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var g Group
	var ended atomic.Int32
	for range 3 {
		g.Go(func() { <-ctx.Done(); ended.Add(1) })
	}
	cancel()
	if !g.Wait(context.Background()) || ended.Load() != 3 {
		t.Fatalf("Wait returned before its members: %d ended", ended.Load())
	}
	if g.Go(func() { t.Error("a member started after Wait") }) {
		t.Error("Go after Wait reported true")
	}
}

func TestGroupWaitBounded(t *testing.T) {
	var g Group
	stop := make(chan struct{})
	defer close(stop)
	g.Go(func() { <-stop })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if g.Wait(ctx) {
		t.Fatal("Wait reported every member done while one still runs")
	}
}
