package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestQuotaRoutes: admins set quotas; a project's tokens read its quota
// and usage, other projects' are 404; bad input is 400 and changes
// nothing; a store's quota refusal is 403 quota_exceeded.
func TestQuotaRoutes(t *testing.T) {
	ts := newTestServer(t)
	adm, viewer, op := ts.tokens[auth.RoleAdmin], ts.tokens[auth.RoleViewer], ts.tokens[auth.RoleOperator]
	resp, raw := ts.raw(t, "PUT", "/v1/projects/team-a/quota", adm, `{"vms":2,"mem_mib":1024,"streams":0}`)
	var q apitypes.QuotaItem
	if resp.StatusCode != 200 || json.Unmarshal(raw, &q) != nil || q.Item.Limits.VMs == nil || *q.Item.Limits.VMs != 2 || q.Item.Limits.VCPUs != nil || q.Item.UpdatedAt == nil {
		t.Fatalf("put: %d %s", resp.StatusCode, raw)
	}
	resp, raw = ts.raw(t, "GET", "/v1/projects/team-a/quota", viewer, "")
	if resp.StatusCode != 200 || !strings.Contains(string(raw), `"vms":2`) || !strings.Contains(string(raw), `"streams":0`) {
		t.Fatalf("get as the project's viewer: %d %s", resp.StatusCode, raw)
	}
	if _, err := ts.st.CreateTemplate(t.Context(), store.Template{Name: "t1", Project: "team-a"}); err != nil {
		t.Fatal(err)
	}
	resp, raw = ts.raw(t, "GET", "/v1/projects/team-a/usage", op, "")
	var u apitypes.ProjectUsageItem
	if resp.StatusCode != 200 || json.Unmarshal(raw, &u) != nil || u.Item.Usage.Templates != 1 || u.Item.Limits.MemMiB == nil || *u.Item.Limits.MemMiB != 1024 {
		t.Fatalf("usage: %d %s", resp.StatusCode, raw)
	}
	// Another project: invisible to the project's tokens, visible to admins.
	for _, path := range []string{"/v1/projects/team-b/quota", "/v1/projects/team-b/usage"} {
		if s, e := ts.call(t, "GET", path, viewer, ""); s != 404 || e.Code != "not_found" {
			t.Errorf("GET %s as another project's viewer: %d %+v; want 404", path, s, e)
		}
		if s, _ := ts.call(t, "GET", path, adm, ""); s != 200 {
			t.Errorf("GET %s as admin: %d", path, s)
		}
	}
	if s, _ := ts.call(t, "PUT", "/v1/projects/team-a/quota", op, `{}`); s != 403 {
		t.Errorf("an operator set a quota: %d", s)
	}
	for _, bad := range []struct{ path, body string }{
		{"/v1/projects/team-a/quota", `{"vms":-1}`},
		{"/v1/projects/team-a/quota", `{"vms":"2"}`},
		{"/v1/projects/team-a/quota", `{"cpus":2}`},
		{"/v1/projects/team-a/quota", `[]`},
		{"/v1/projects/team-a/quota", `{"vms":1e30}`},
		{"/v1/projects/-bad/quota", `{}`},
		{"/v1/projects/" + strings.Repeat("p", 64) + "/quota", `{}`},
	} {
		if s, e := ts.call(t, "PUT", bad.path, adm, bad.body); s != 400 {
			t.Errorf("PUT %s %s: %d %+v; want 400", bad.path, bad.body, s, e)
		}
	}
	if got, _ := ts.st.GetQuota(t.Context(), "team-a"); got.Limits.VMs == nil || *got.Limits.VMs != 2 {
		t.Fatalf("bad input changed the quota: %+v", got.Limits)
	}
	// The store's refusal, as the API answers it.
	e, ok := quotaError(&store.QuotaError{Project: "team-a", Resource: "vms", Limit: 2, Used: 2, Want: 1})
	if !ok || e.Status != 403 || e.Code != "quota_exceeded" || !strings.Contains(e.Message, "quota of 2 (2 in use)") || !strings.Contains(e.Suggestion, "/v1/projects/team-a/usage") {
		t.Fatalf("quota error = %+v", e)
	}
	// The PUT is audited with the project and its quota before and after.
	rows := auditRows(t, ts)
	last := rows[len(rows)-1]
	for _, r := range rows {
		if r.Action == "quota.set" && r.Result == store.AuditSuccess {
			last = r
		}
	}
	if last.Action != "quota.set" || last.ResourceID != "team-a" || !strings.Contains(string(last.After), `"vms":2`) {
		t.Fatalf("audit row of the put: %+v", last)
	}
}
