package e2e

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// token creates a token through the API as admin.
func (c *cluster) token(t *testing.T, owner, role, project string) string {
	t.Helper()
	var sec apitypes.TokenSecret
	err := c.client.Do(context.Background(), "POST", "/v1/tokens", nil,
		apitypes.CreateTokenRequest{Owner: owner, Role: role, Project: project}, &sec)
	if err != nil {
		t.Fatal(err)
	}
	return sec.Token
}

// TestRBACAndAudit: roles and projects decide who may do what, and one
// VM's whole life is on record, in order, with who did it.
func TestRBACAndAudit(t *testing.T) {
	c := newCluster(t, "sqlite", 1)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, c.dir)
	opA := nexus.New(c.url(), c.token(t, "alice", "operator", "team-a"))
	viewA := nexus.New(c.url(), c.token(t, "victor", "viewer", "team-a"))
	opB := nexus.New(c.url(), c.token(t, "bob", "operator", "team-b"))

	req := apitypes.CreateVMRequest{Name: "svc", Project: "team-a", VMConfig: apitypes.VMConfig{KernelPath: kernel}}
	// Raw host paths can attach any host file to a guest: admins only.
	if _, err := opA.CreateVM(ctx, req, true); !isStatus(err, 403) {
		t.Fatalf("operator create with a raw kernel path: %v; want 403", err)
	}
	vm, err := c.client.CreateVM(ctx, req, true)
	if err != nil || vm.Project != "team-a" {
		t.Fatalf("admin create in team-a: %+v, %v", vm, err)
	}
	other := req
	other.Project = "team-b"
	if _, err := opA.CreateVM(ctx, other, true); !isStatus(err, 403) {
		t.Fatalf("operator create in another project: %v; want 403", err)
	}
	if _, err := viewA.CreateVM(ctx, req, true); !isStatus(err, 403) {
		t.Fatalf("viewer create: %v; want 403", err)
	}
	if _, err := viewA.GetVM(ctx, vm.ID); err != nil {
		t.Fatalf("viewer read in its project: %v", err)
	}
	if err := viewA.VMAction(ctx, vm.ID, "stop"); !isStatus(err, 403) {
		t.Fatalf("viewer stop: %v; want 403", err)
	}
	// Another project's token does not even learn the VM exists.
	if _, err := opB.GetVM(ctx, vm.ID); !isStatus(err, 404) {
		t.Fatalf("other project get: %v; want 404", err)
	}
	if err := opB.VMAction(ctx, vm.ID, "stop"); !isStatus(err, 404) {
		t.Fatalf("other project stop: %v; want 404", err)
	}
	if l, err := opB.ListVMs(ctx, nexus.ListVMsOptions{}); err != nil || len(l.Items) != 0 {
		t.Fatalf("other project list: %+v, %v", l, err)
	}
	if err := opA.Do(ctx, "GET", "/v1/tokens", nil, nil, nil); !isStatus(err, 403) {
		t.Fatalf("operator lists tokens: %v; want 403", err)
	}

	for _, a := range []string{"pause", "resume", "stop", "start"} {
		if err := opA.VMAction(ctx, vm.ID, a); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if err := c.client.DeleteVM(ctx, vm.ID); err != nil { // admin deletes
		t.Fatal(err)
	}

	var trail apitypes.AuditList
	if err := viewA.Do(ctx, "GET", "/v1/audit", url.Values{"vm_id": {vm.ID}}, nil, &trail); !isStatus(err, 404) {
		t.Fatalf("viewer audit of a deleted VM: %v; want 404 (it cannot see it any more)", err)
	}
	if err := c.client.Do(ctx, "GET", "/v1/audit", url.Values{"vm_id": {vm.ID}}, nil, &trail); err != nil {
		t.Fatal(err)
	}
	want := []struct{ action, result, actor string }{
		{"vm.create", "success", "e2e"},
		{"vm.stop", "denied", "victor"},
		{"vm.stop", "failure", "bob"},
		{"vm.pause", "success", "alice"},
		{"vm.resume", "success", "alice"},
		{"vm.stop", "success", "alice"},
		{"vm.start", "success", "alice"},
		{"vm.delete", "success", "e2e"},
	}
	if len(trail.Items) != len(want) {
		t.Fatalf("audit trail has %d rows, want %d: %+v", len(trail.Items), len(want), trail.Items)
	}
	var prev time.Time
	for i, w := range want {
		got := trail.Items[i]
		if got.Action != w.action || got.Result != w.result || !hasPrefix(got.Actor, w.actor) ||
			got.RequestID == "" || got.At.Before(prev) || got.CompletedAt == nil {
			t.Errorf("row %d = %s %s by %q at %s; want %s %s by %s", i, got.Action, got.Result, got.Actor, got.At, w.action, w.result, w.actor)
		}
		prev = got.At
	}
	if string(trail.Items[5].Before) == "" || string(trail.Items[5].After) == "" {
		t.Errorf("stop row lacks before/after: %+v", trail.Items[5])
	}
	c.assertNoLeaks(vm.ID)
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// TestRevokeAcrossManagers: two managers share Postgres; a token used (and
// so cached) on both stops working on both as soon as one revokes it.
func TestRevokeAcrossManagers(t *testing.T) {
	c := newCluster(t, "postgres", 1)
	ctx := context.Background()
	port2 := freePort(t)
	m2 := c.start("manager-2", nil, "manager", "--listen", fmt.Sprintf("127.0.0.1:%d", port2),
		"--database-url", c.dsn, "--join-token", c.join)
	t.Cleanup(m2.kill)
	m2.waitLog(t, "manager listening", 20*time.Second)

	var sec apitypes.TokenSecret
	if err := c.client.Do(ctx, "POST", "/v1/tokens", nil, apitypes.CreateTokenRequest{Owner: "temp", Role: "viewer", Project: "*"}, &sec); err != nil {
		t.Fatal(err)
	}
	on1 := nexus.New(c.url(), sec.Token)
	on2 := nexus.New(fmt.Sprintf("http://127.0.0.1:%d", port2), sec.Token)
	for _, cl := range []*nexus.Client{on1, on2} {
		if _, err := cl.ListVMs(ctx, nexus.ListVMsOptions{}); err != nil {
			t.Fatalf("fresh token: %v", err)
		}
	}
	if err := c.client.Do(ctx, "DELETE", "/v1/tokens/"+sec.ID, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := on1.ListVMs(ctx, nexus.ListVMsOptions{}); !isStatus(err, 401) {
		t.Fatalf("revoking manager still accepts the token: %v", err)
	}
	// The other manager hears it through LISTEN/NOTIFY: allow it the time
	// a notification takes, far below its cache TTL.
	eventually(t, 2*time.Second, "revocation reaches the second manager", func() error {
		if _, err := on2.ListVMs(ctx, nexus.ListVMsOptions{}); !isStatus(err, 401) {
			return fmt.Errorf("still accepted: %v", err)
		}
		return nil
	})
}
