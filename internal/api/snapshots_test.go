package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
)

// TestSnapshotRoutes checks what the snapshot routes decide before any
// host is involved: bodies, 404s, projects, and the audit of a delete.
func TestSnapshotRoutes(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	const unknown = "00000000-0000-4000-8000-000000000009"
	sn, err := ts.st.CreateSnapshot(ctx, store.Snapshot{
		ID: "00000000-0000-4000-8000-0000000000b1", VMID: unknown, Project: "team-b", HostID: "gone",
		Dir: "/srv/fc/vms/x/snapshots/y", StatePath: "/srv/fc/vms/x/snapshots/y/vmstate", MemPath: "/srv/fc/vms/x/snapshots/y/mem",
		Meta: json.RawMessage(`{"vm_name":"db","source":{"vcpu":1,"mem_mib":128,"spec":{}}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	op, admin := ts.tokens[auth.RoleOperator], ts.tokens[auth.RoleAdmin]
	for _, tc := range []struct {
		name, method, path, token, body string
		status                          int
	}{
		{"snapshot without a body", "POST", "/v1/vms/" + unknown + "/snapshots", op, "", 404},
		{"snapshot unknown field", "POST", "/v1/vms/" + unknown + "/snapshots", op, `{"full":true}`, 400},
		{"unknown snapshot", "GET", "/v1/snapshots/" + unknown, op, "", 404},
		{"other project get", "GET", "/v1/snapshots/" + sn.ID, op, "", 404},
		{"other project restore", "POST", "/v1/snapshots/" + sn.ID + "/instantiate", op, `{"name":"x"}`, 404},
		{"other project delete", "DELETE", "/v1/snapshots/" + sn.ID, op, "", 404},
		{"restore without name", "POST", "/v1/snapshots/" + sn.ID + "/instantiate", admin, `{}`, 400},
		{"restore unknown field", "POST", "/v1/snapshots/" + sn.ID + "/instantiate", admin, `{"name":"x","mac":"02:00:00:00:00:01"}`, 400},
		{"vm snapshots of unknown vm", "GET", "/v1/vms/" + unknown + "/snapshots", op, "", 404},
		{"admin get", "GET", "/v1/snapshots/" + sn.ID, admin, "", 200},
		{"admin lists a deleted vm's snapshots", "GET", "/v1/vms/" + unknown + "/snapshots", admin, "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if status, e := ts.call(t, tc.method, tc.path, tc.token, tc.body); status != tc.status {
				t.Fatalf("%s %s: %d %+v; want %d", tc.method, tc.path, status, e, tc.status)
			}
		})
	}
	if n := countSnapshots(t, ts, op); n != 0 {
		t.Fatalf("operator of team-a lists %d snapshots of team-b", n)
	}
	if n := countSnapshots(t, ts, admin); n != 1 {
		t.Fatalf("admin lists %d snapshots; want 1", n)
	}
	// The host is gone: delete drops the catalog entry, audited by id.
	if status, e := ts.call(t, "DELETE", "/v1/snapshots/"+sn.ID, admin, ""); status != 200 {
		t.Fatalf("delete: %d %+v", status, e)
	}
	rows, _ := ts.st.ListAudit(ctx, store.AuditFilter{ResourceID: sn.ID})
	// The operator's attempt (404) and the admin's delete are both on record.
	if len(rows) != 2 || rows[0].Result != store.AuditFailure || rows[1].Action != "snapshot.delete" || rows[1].Result != store.AuditSuccess {
		t.Fatalf("audit of the deletes: %+v", rows)
	}
	if status, _ := ts.call(t, "POST", "/v1/snapshots/"+sn.ID+"/instantiate", admin, `{"name":"x"}`); status != 404 {
		t.Fatalf("restore of a deleted snapshot: %d; want 404", status)
	}
}

func countSnapshots(t *testing.T, ts *testServer, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.http.URL+"/v1/snapshots", strings.NewReader(""))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var l struct{ Items []json.RawMessage }
	if resp.StatusCode != 200 || json.Unmarshal(raw, &l) != nil {
		t.Fatalf("list: %d %s", resp.StatusCode, raw)
	}
	return len(l.Items)
}
