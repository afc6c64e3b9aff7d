package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TestProjectAdminIsAdminOfItsProjectOnly: an admin token of one project
// sees and manages that project (its VMs, its tokens) and nothing else:
// not other projects' VMs or tokens, not hosts, quotas, the whole audit
// trail or raw host paths.
func TestProjectAdminIsAdminOfItsProjectOnly(t *testing.T) {
	ts := newTestServer(t)
	ctx := context.Background()
	padmin, _, err := auth.Issue(ctx, ts.st, "", "team-a-admin", auth.RoleAdmin, "team-a")
	if err != nil {
		t.Fatal(err)
	}
	mine, err := ts.st.CreateVM(ctx, store.VM{Name: "mine", Project: "team-a", State: store.VMStopped, DesiredState: store.VMStopped, VCPU: 1, MemMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := ts.st.CreateVM(ctx, store.VM{Name: "theirs", Project: "team-b", State: store.VMStopped, DesiredState: store.VMStopped, VCPU: 1, MemMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms/"+mine.ID, padmin, ""); s != 200 {
		t.Fatalf("own project's VM: %d", s)
	}
	if s, _ := ts.call(t, "GET", "/v1/vms/"+theirs.ID, padmin, ""); s != 404 {
		t.Fatalf("another project's VM: %d; want 404", s)
	}
	// Tokens: of its project only.
	if s, e := ts.call(t, "POST", "/v1/tokens", padmin, `{"owner":"x","role":"viewer","project":"team-b"}`); s != 403 {
		t.Fatalf("a token of another project: %d %+v; want 403", s, e)
	}
	if s, e := ts.call(t, "POST", "/v1/tokens", padmin, `{"owner":"x","role":"admin","project":"*"}`); s != 403 {
		t.Fatalf("a token of every project: %d %+v; want 403", s, e)
	}
	var sec apitypes.TokenSecret
	if s := post(t, ts, "/v1/tokens", padmin, `{"owner":"ci","role":"operator","project":"team-a"}`, &sec); s != 201 {
		t.Fatalf("a token of its project: %d", s)
	}
	_, other, err := auth.Issue(ctx, ts.st, "", "b-user", auth.RoleViewer, "team-b")
	if err != nil {
		t.Fatal(err)
	}
	resp, raw := ts.raw(t, "GET", "/v1/tokens", padmin, "")
	var list apitypes.TokenList
	if resp.StatusCode != 200 || json.Unmarshal(raw, &list) != nil {
		t.Fatalf("list tokens: %d %s", resp.StatusCode, raw)
	}
	for _, tk := range list.Items {
		if tk.Project != "team-a" {
			t.Errorf("a project's admin lists a token of %q", tk.Project)
		}
	}
	for _, path := range []string{"/v1/tokens/" + other.ID + "/rotate"} {
		if s, _ := ts.call(t, "POST", path, padmin, ""); s != 404 {
			t.Errorf("POST %s: %d; want 404", path, s)
		}
	}
	if s, _ := ts.call(t, "DELETE", "/v1/tokens/"+other.ID, padmin, ""); s != 404 {
		t.Errorf("revoke another project's token: %d; want 404", s)
	}
	if s, _ := ts.call(t, "POST", "/v1/tokens/"+sec.ID+"/rotate", padmin, ""); s != 200 {
		t.Errorf("rotate its project's token: %d", s)
	}
	// Fleet-wide operations need an admin of every project.
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/v1/projects/team-a/quota", `{}`},
		{"POST", "/v1/hosts/h/drain", ""},
		{"DELETE", "/v1/hosts/h", ""},
	} {
		if s, e := ts.call(t, c.method, c.path, padmin, c.body); s != 403 || !strings.Contains(e.Message, "administers that project only") {
			t.Errorf("%s %s: %d %+v; want 403", c.method, c.path, s, e)
		}
	}
	if s, _ := ts.call(t, "GET", "/v1/audit", padmin, ""); s != 403 {
		t.Errorf("the whole audit trail: %d; want 403", s)
	}
	if s, _ := ts.call(t, "GET", "/v1/projects/team-b/usage", padmin, ""); s != 404 {
		t.Errorf("another project's usage: %d; want 404", s)
	}
	if s, e := ts.call(t, "POST", "/v1/vms?wait=false", padmin, `{"name":"raw","kernel_path":"/srv/fc/images/vmlinux"}`); s != 403 || e.Code != "raw_path_refused" {
		t.Errorf("raw paths: %d %+v; want 403 raw_path_refused", s, e)
	}
}
