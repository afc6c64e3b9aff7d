package api

import (
	"context"
	"database/sql"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
)

// TestPathParametersBounded: every path parameter has a maxLength, which
// the guard enforces before authentication and the audit (checkPathBounds).
func TestPathParametersBounded(t *testing.T) {
	ts := newTestServer(t)
	for _, op := range ts.srv.Operations() {
		for _, p := range op.Parameters {
			if p.In == "path" && (p.Schema == nil || p.Schema.MaxLength == nil) {
				t.Errorf("%s %s: path parameter %s has no maxLength", op.Method, op.Path, p.Name)
			}
		}
	}
}

// auditFloodBytes is the documented bound (docs/api.md, Audit): 1,000
// anonymous calls with 900 KB ids and 1,000 anonymous denials with valid
// ids grow the database by less than this.
const auditFloodBytes = 64 << 10

// TestAnonymousFloodLeavesAuditBounded: ids over their bound are refused
// (400) with no audit row, and an anonymous caller's denials are counted
// per source, action and minute, so a flood grows the database by a few
// pages, not by what it sends.
func TestAnonymousFloodLeavesAuditBounded(t *testing.T) {
	dir := t.TempDir()
	ts := newTestServerAt(t, filepath.Join(dir, "nexus.db"))
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "nexus.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	size := func() int64 {
		t.Helper()
		var pages, pageSize int64
		if err := db.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow("PRAGMA page_size").Scan(&pageSize); err != nil {
			t.Fatal(err)
		}
		return pages * pageSize
	}
	rows := func() []store.AuditEntry {
		t.Helper()
		r, err := ts.st.ListAudit(context.Background(), store.AuditFilter{Limit: 10000})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	before, rowsBefore := size(), len(rows())
	if before == 0 {
		t.Fatal("the database has no pages: the size is not measured")
	}

	huge := strings.Repeat("a", 900_000)
	for i := range 1000 {
		path := "/v1/vms/" + huge + "/stop"
		if i%2 == 1 {
			path = "/v1/tokens/" + huge + "/rotate"
		}
		if status, e := ts.call(t, http.MethodPost, path, "", ""); status != http.StatusBadRequest || e.Code != "invalid_request" {
			t.Fatalf("900 KB id: %d %+v; want 400 invalid_request", status, e)
		}
	}
	if got := len(rows()); got != rowsBefore {
		t.Fatalf("%d audit rows after refused ids; want %d (none written)", got, rowsBefore)
	}
	// The same with a too-long id and a valid token: refused before the
	// audit too.
	if status, _ := ts.call(t, http.MethodPost, "/v1/vms/"+huge+"/stop", ts.tokens[auth.RoleOperator], ""); status != http.StatusBadRequest {
		t.Fatalf("900 KB id with a token: %d; want 400", status)
	}

	// Valid ids, no token: 401, counted per source, action and minute.
	actions := []string{"/v1/vms/%s/stop", "/v1/vms/%s/start", "/v1/vms/%s"}
	for i := range 1000 {
		id := strings.Repeat("b", 60) + string(rune('0'+i%10))
		tmpl := actions[i%len(actions)]
		method := http.MethodPost
		if !strings.HasSuffix(tmpl, "stop") && !strings.HasSuffix(tmpl, "start") {
			method = http.MethodDelete
		}
		if status, _ := ts.call(t, method, strings.Replace(tmpl, "%s", id, 1), "", ""); status != http.StatusUnauthorized {
			t.Fatalf("anonymous call: %d; want 401", status)
		}
	}
	all := rows()[rowsBefore:]
	var counted int64
	for _, r := range all {
		if r.Actor != anonymous || r.Result != store.AuditDenied || r.Source != "127.0.0.1" {
			t.Errorf("row %+v: want an anonymous denial from 127.0.0.1", r)
		}
		counted += r.Count
	}
	// Three actions; the flood may straddle a minute.
	if len(all) < 3 || len(all) > 6 || counted != 1000 {
		t.Errorf("%d rows counting %d calls; want 3 to 6 rows counting 1000", len(all), counted)
	}
	if grown := size() - before; grown > auditFloodBytes {
		t.Errorf("the database grew by %d bytes; want at most %d", grown, auditFloodBytes)
	} else {
		t.Logf("the database grew by %d bytes for 2,001 refused calls", grown)
	}
}
