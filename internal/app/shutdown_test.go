package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// A manager with a hollow agent, 50 open log streams and VMs still
// booting shuts down at once: the streams end, the boots finish or are
// abandoned within their budget, every goroutine is joined, the
// reconciler's lease is released before the store closes, and nothing is
// left running. No root needed: the agent is hollow.
func TestShutdownWithStreamsAndBoots(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir, err := os.MkdirTemp("", "nxs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dsn := "sqlite://" + filepath.Join(dir, "nexus.db")
	join := strings.Repeat("j", 32)
	m, err := StartManager(ctx, ManagerOptions{Listen: "127.0.0.1:0", DatabaseURL: dsn, Mode: "dev", JoinToken: join,
		ReconcileInterval: 100 * time.Millisecond, AuditRetention: time.Hour, MaxStreamsPerToken: 64}, log)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.Start(ctx, agent.Options{Name: "h", Bind: "127.0.0.1:0", Manager: m.URL(), Token: join,
		RunDir: filepath.Join(dir, "run"), Hollow: true, Heartbeat: 100 * time.Millisecond,
		VMMEnv: []string{"FC_SIM_START_DELAY=800ms"}}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitForHost(ctx, m, ag.URL, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	secret, _, err := Bootstrap(ctx, m.Store, "test")
	if err != nil {
		t.Fatal(err)
	}
	cl := nexus.New(m.URL(), secret)
	kernel := simtest.WriteKernel(t, dir)
	vm, err := cl.CreateVM(ctx, apitypes.CreateVMRequest{Name: "streamed", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil {
		t.Fatal(err)
	}

	// 50 streams of its console, each reading until its stream ends.
	hc := &http.Client{Transport: &http.Transport{}}
	var ended sync.WaitGroup
	opened := make(chan error, 50)
	for range 50 {
		ended.Go(func() {
			req, _ := http.NewRequest("GET", m.URL()+"/v1/vms/"+vm.ID+"/logs/stream?source=console", nil)
			req.Header.Set("Authorization", "Bearer "+secret)
			resp, err := hc.Do(req)
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			opened <- err
			if err != nil {
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
			}
		})
	}
	for range 50 {
		if err := <-opened; err != nil {
			t.Fatalf("open a stream: %v", err)
		}
	}
	// Boots under way: each VMM takes 800 ms to start its guest.
	for i := range 5 {
		if _, err := cl.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("booting-%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // the boots reach their VMMs

	start := time.Now()
	cancel()
	done := make(chan struct{})
	go func() { ag.Wait(); m.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("shutdown did not finish in 20 s")
	}
	took := time.Since(start)
	t.Logf("shutdown with 50 open streams and 5 boots under way took %v", took)
	ended.Wait() // every stream has ended
	hc.CloseIdleConnections()
	cl.CloseIdle()
	if took > 10*time.Second {
		// Not a timing assertion about this machine's speed: the old
		// behaviour waited 30 s for streams; anything near that is the bug.
		t.Errorf("shutdown took %v: streams or background work held it", took)
	}

	// The store was closed last: the lease was released while it was
	// still open.
	st, err := store.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if l, err := st.GetLease(context.Background(), "reconciler"); err == nil && l.Holder != "" {
		t.Errorf("the reconciler lease is still held after shutdown: %+v", l)
	} else if err != nil && !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	if err := m.Store.Ping(context.Background()); err == nil {
		t.Error("the manager's store still answers after shutdown")
	}
}
