package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// TestStreamCapsKeepTheAPIAnswering: a viewer opening log streams past
// its token's cap gets 429 too_many_streams with Retry-After; past the
// manager's cap every token does; meanwhile /healthz and a create answer,
// and a closed stream frees its slot.
func TestStreamCapsKeepTheAPIAnswering(t *testing.T) {
	c := newCluster(t, "sqlite", 1, "--max-streams", "6", "--max-streams-per-token", "4")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kernel := simtest.WriteKernel(t, c.dir)
	vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "streamed", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil {
		t.Fatal(err)
	}
	viewer := func(owner string) string {
		sec, err := c.client.CreateToken(ctx, apitypes.CreateTokenRequest{Owner: owner, Role: "viewer", Project: "default"})
		if err != nil {
			t.Fatal(err)
		}
		return sec.Token
	}
	alice, bob := viewer("alice"), viewer("bob")
	hc := &http.Client{Transport: contract}
	open := func(token string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", c.url()+"/v1/vms/"+vm.ID+"/logs/stream?source=console", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return nil, fmt.Errorf("%d Retry-After=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), raw)
		}
		return resp, nil
	}
	var held []*http.Response
	defer func() {
		for _, r := range held {
			r.Body.Close()
		}
	}()
	wantRefused := func(token, what string) {
		t.Helper()
		_, err := open(token)
		if err == nil || !strings.HasPrefix(err.Error(), "429 Retry-After=\"5\"") || !strings.Contains(err.Error(), "too_many_streams") {
			t.Fatalf("%s: %v; want 429 too_many_streams with Retry-After", what, err)
		}
	}
	for i := range 4 {
		r, err := open(alice)
		if err != nil {
			t.Fatalf("alice's stream %d: %v", i+1, err)
		}
		held = append(held, r)
	}
	wantRefused(alice, "alice's 5th stream (token cap 4)")
	for i := range 2 {
		r, err := open(bob)
		if err != nil {
			t.Fatalf("bob's stream %d: %v", i+1, err)
		}
		held = append(held, r)
	}
	wantRefused(bob, "bob's 3rd stream (manager cap 6)")

	// The API still answers at the caps.
	if h, err := c.client.Health(ctx); err != nil {
		t.Fatalf("/healthz at the stream cap: %+v %v", h, err)
	}
	vm2, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "created-at-cap", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil || vm2.State != "running" {
		t.Fatalf("create at the stream cap: %+v %v", vm2, err)
	}

	// A closed stream gives its slot back.
	held[0].Body.Close()
	held = held[1:]
	eventually(t, 10*time.Second, "alice's closed stream frees a slot", func() error {
		r, err := open(alice)
		if err != nil {
			return err
		}
		held = append(held, r)
		return nil
	})
	if _, err := c.client.GetVM(ctx, vm.ID); err != nil {
		t.Fatalf("a read at the stream cap: %v", err)
	}
}

// TestQuotaAcrossTwoManagers: two managers on one Postgres take creates
// of one project at once; exactly its quota of VMs is admitted, the rest
// answer 403 quota_exceeded, and the usage says so.
func TestQuotaAcrossTwoManagers(t *testing.T) {
	c := newCluster(t, "postgres", 1)
	port2 := freePort(t)
	m2 := c.start("manager-2", nil, "manager", "--listen", fmt.Sprintf("127.0.0.1:%d", port2), "--database-url", c.dsn, "--join-token", c.join)
	t.Cleanup(m2.kill)
	m2.waitLog(t, "manager listening", 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const quota = 3
	if _, err := c.client.SetQuota(ctx, "race", apitypes.QuotaLimits{VMs: ptr(int64(quota))}); err != nil {
		t.Fatal(err)
	}
	// Admin: raw kernel paths need it (dev mode); the quota binds admins too.
	clients := []*nexus.Client{c.client, newClient(fmt.Sprintf("http://127.0.0.1:%d", port2), c.admin)}
	kernel := simtest.WriteKernel(t, c.dir)
	const n = 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	var created []apitypes.VM
	refused := 0
	for i := range n {
		wg.Go(func() {
			vm, err := clients[i%2].CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("q-%d", i), Project: "race", Start: ptr(false),
				VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
			mu.Lock()
			defer mu.Unlock()
			var ae *nexus.APIError
			switch {
			case err == nil:
				created = append(created, vm)
			case errors.As(err, &ae) && ae.Status == 403 && ae.Code == "quota_exceeded":
				refused++
			default:
				t.Errorf("create %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	defer c.teardown(t, created)
	if len(created) != quota || refused != n-quota {
		t.Fatalf("%d created, %d refused; want %d and %d", len(created), refused, quota, n-quota)
	}
	u, err := clients[1].ProjectUsage(ctx, "race")
	if err != nil || u.Usage.VMs != quota || u.Limits.VMs == nil || *u.Limits.VMs != quota {
		t.Fatalf("usage: %+v %v", u, err)
	}
}

func ptr[T any](v T) *T { return &v }
