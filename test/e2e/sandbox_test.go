package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// ttlInterval is the reconcile interval of the TTL test's manager; the
// expiry sweep runs every second regardless.
const ttlInterval = 2 * time.Second

// ttlLease is the reconciler lease's TTL there: a SIGKILLed manager keeps
// the lease that long, so its successor acts only after it.
const ttlLease = 3 * time.Second

// TestTTL: a VM with a 2 s time to live is deleted (or stopped, per
// on_expiry) within the reconcile interval of its expiry, with an event
// and an audit row of the system; an extended VM stays; an expiry survives
// a manager restart; bad ttl input is 400 and creates nothing.
func TestTTL(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1, "--reconcile-interval", ttlInterval.String(), "--lease-ttl", ttlLease.String())
			ctx := context.Background()
			kernel := simtest.WriteKernel(t, c.dir)
			mk := func(name string, e apitypes.Expiry) apitypes.VM {
				t.Helper()
				vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: kernel}, Expiry: e}, true)
				if err != nil {
					t.Fatalf("create %s: %v", name, err)
				}
				return vm
			}

			// Bad input: 400, nothing made.
			for _, e := range []apitypes.Expiry{
				{TTL: "0s"}, {TTL: "500ms"}, {TTL: "abc"}, {TTL: "9000h"}, {TTL: "-1h"},
				{TTL: "1h", OnExpiry: "explode"}, {OnExpiry: "stop"},
			} {
				_, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "bad", VMConfig: apitypes.VMConfig{KernelPath: kernel}, Expiry: e}, true)
				if !isStatus(err, 400) {
					t.Fatalf("create with %+v = %v; want 400", e, err)
				}
			}
			if l, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{}); len(l.Items) != 0 {
				t.Fatalf("bad creates left VMs: %+v", l.Items)
			}

			short := mk("short", apitypes.Expiry{TTL: "2s"})
			if short.ExpiresAt == nil || short.OnExpiry != "delete" {
				t.Fatalf("created VM: expires_at %v, on_expiry %q; want set, delete", short.ExpiresAt, short.OnExpiry)
			}
			stopper := mk("stopper", apitypes.Expiry{TTL: "2s", OnExpiry: "stop"})
			kept := mk("kept", apitypes.Expiry{TTL: "2s"})
			for _, bad := range []string{"0s", "x", "9000h"} {
				if _, err := c.client.ExtendTTL(ctx, kept.ID, bad, ""); !isStatus(err, 400) {
					t.Fatalf("extend with %q = %v; want 400", bad, err)
				}
			}
			if _, err := c.client.ExtendTTL(ctx, kept.ID, "1h", "bogus"); !isStatus(err, 400) {
				t.Fatalf("extend with on_expiry bogus = %v; want 400", err)
			}
			ext, err := c.client.ExtendTTL(ctx, kept.ID, "1h", "stop")
			if err != nil {
				t.Fatal(err)
			}
			if ext.ExpiresAt == nil || time.Until(*ext.ExpiresAt) < 50*time.Minute || ext.OnExpiry != "stop" {
				t.Fatalf("extended VM: expires_at %v, on_expiry %q; want about 1h from now, stop", ext.ExpiresAt, ext.OnExpiry)
			}
			if _, err := c.client.ExtendTTL(ctx, "no-such-vm", "1h", ""); !isStatus(err, 404) {
				t.Fatalf("extend of a missing VM = %v; want 404", err)
			}

			// Gone within the reconcile interval after its expiry (plus
			// the time a delete takes).
			deadline := short.ExpiresAt.Add(ttlInterval + 3*time.Second)
			eventually(t, time.Until(deadline), "expired VM deleted", func() error {
				if _, err := c.client.GetVM(ctx, short.ID); !isStatus(err, 404) {
					return fmt.Errorf("still there: %v", err)
				}
				return nil
			})
			eventually(t, 5*time.Second, "expired VM stopped", func() error {
				v, err := c.client.GetVM(ctx, stopper.ID)
				if err != nil {
					return err
				}
				if v.State != "stopped" || v.ExpiresAt != nil {
					return fmt.Errorf("state %s, expires_at %v", v.State, v.ExpiresAt)
				}
				return nil
			})
			evs, err := c.client.Events(ctx, stopper.ID)
			if err != nil || !hasEvent(evs, "time to live over") {
				t.Fatalf("stopped VM's events lack the expiry: %+v, %v", evs.Items, err)
			}
			for id, want := range map[string]string{short.ID: "delete", stopper.ID: "stop"} {
				rows, err := c.client.Audit(ctx, nexus.AuditOptions{VMID: id})
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, r := range rows.Items {
					if r.Action == "vm.expire" && r.Actor == "system (reconciler)" && r.Result == "success" {
						found = true
					}
				}
				if !found {
					t.Fatalf("no vm.expire audit row of the system for the %s VM: %+v", want, rows.Items)
				}
			}
			if v, err := c.client.GetVM(ctx, kept.ID); err != nil || v.State != "running" {
				t.Fatalf("extended VM = %s, %v; want running", v.State, err)
			}

			// An expiry is in the store: a manager restarted before it
			// passes still acts on it (once it holds the lease its
			// killed predecessor could not release).
			persist := mk("persist", apitypes.Expiry{TTL: "3s"})
			c.restartManager()
			c.waitHosts(1)
			eventually(t, time.Until(time.Now().Add(ttlLease).Add(ttlInterval+5*time.Second)), "expiry after a manager restart", func() error {
				if _, err := c.client.GetVM(ctx, persist.ID); !isStatus(err, 404) {
					return fmt.Errorf("still there: %v", err)
				}
				return nil
			})

			for _, id := range []string{kept.ID, stopper.ID} {
				if err := c.client.DeleteVM(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			c.assertNoLeaks(short.ID, stopper.ID, kept.ID, persist.ID)
		})
	}
}

func hasEvent(evs apitypes.EventList, substr string) bool {
	for _, e := range evs.Items {
		if strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}
