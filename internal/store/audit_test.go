package store_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/nexus-microvm/nexus/internal/store"
)

var auditBehaviours = []behaviour{
	{"audit/fields_are_truncated", func(t *testing.T, e *env) {
		huge := strings.Repeat("é", 450_000) // 900 KB
		id := must(e.s.BeginAudit(ctx, store.AuditEntry{
			Actor: huge, Action: huge, Resource: huge, ResourceID: huge, RequestID: huge, Source: huge,
		}))(t)
		if err := e.s.CompleteAudit(ctx, id, store.AuditDenied, nil, huge); err != nil {
			t.Fatal(err)
		}
		got := must(e.s.GetAudit(ctx, id))(t)
		for _, f := range []struct {
			name string
			v    string
			max  int
		}{
			{"actor", got.Actor, store.MaxAuditActor}, {"action", got.Action, store.MaxAuditAction},
			{"resource", got.Resource, store.MaxAuditResource}, {"resource_id", got.ResourceID, store.MaxAuditResourceID},
			{"request_id", got.RequestID, store.MaxAuditRequestID}, {"source", got.Source, store.MaxAuditSource},
			{"error", got.Error, store.MaxAuditError},
		} {
			if len(f.v) > f.max || len(f.v) < f.max-1 || !utf8.ValidString(f.v) {
				t.Errorf("%s: %d bytes (valid UTF-8 %v); want %d or one less, cut on a rune", f.name, len(f.v), utf8.ValidString(f.v), f.max)
			}
		}
	}},
	{"audit/denials_aggregate_per_source_action_minute", func(t *testing.T, e *env) {
		deny := func(source, action string) {
			t.Helper()
			if err := e.s.CountDenial(ctx, store.AuditEntry{Actor: "anonymous", Action: action, Resource: "vm",
				ResourceID: "x", Source: source, Error: "missing bearer token"}); err != nil {
				t.Fatal(err)
			}
		}
		// Start at a minute's beginning so that 50 s stays in it.
		now := e.clock.Now()
		e.clock.Advance(now.Truncate(time.Minute).Add(time.Minute).Sub(now))
		for range 50 {
			deny("10.0.0.1", "vm.stop")
			e.clock.Advance(time.Second)
		}
		deny("10.0.0.2", "vm.stop")
		deny("10.0.0.1", "vm.start")
		e.clock.Advance(time.Minute)
		deny("10.0.0.1", "vm.stop")
		rows := must(e.s.ListAudit(ctx, store.AuditFilter{}))(t)
		type key struct {
			source, action string
			count          int64
		}
		var got []key
		for _, r := range rows {
			if r.Result != store.AuditDenied || r.Actor != "anonymous" || r.CompletedAt == nil {
				t.Errorf("row %+v: want a completed anonymous denial", r)
			}
			got = append(got, key{r.Source, r.Action, r.Count})
		}
		want := []key{{"10.0.0.1", "vm.stop", 50}, {"10.0.0.2", "vm.stop", 1}, {"10.0.0.1", "vm.start", 1}, {"10.0.0.1", "vm.stop", 1}}
		if d := cmp.Diff(want, got, cmp.AllowUnexported(key{})); d != "" {
			t.Errorf("rows (-want +got):\n%s", d)
		}
	}},
	{"audit/prune_keeps_younger_rows", func(t *testing.T, e *env) {
		var ids []int64
		for range 7 {
			ids = append(ids, must(e.s.BeginAudit(ctx, store.AuditEntry{Actor: "a", Action: "vm.stop", Resource: "vm"}))(t))
			e.clock.Advance(time.Hour)
		}
		// Rows at t0 … t0+6h; the cutoff t0+3h drops the three before it.
		cutoff := e.clock.Now().Add(-4 * time.Hour).Truncate(time.Microsecond) // as stored
		if n := must(e.s.PruneAudit(ctx, cutoff))(t); n != 3 {
			t.Errorf("pruned %d rows; want 3", n)
		}
		rows := must(e.s.ListAudit(ctx, store.AuditFilter{}))(t)
		if len(rows) != 4 || rows[0].ID != ids[3] {
			t.Fatalf("%d rows left, first %v; want 4 from id %d", len(rows), rows, ids[3])
		}
		for _, r := range rows {
			if r.At.Before(cutoff) {
				t.Errorf("row %d at %v is older than the cutoff %v", r.ID, r.At, cutoff)
			}
		}
		if n := must(e.s.PruneAudit(ctx, cutoff))(t); n != 0 {
			t.Errorf("a second prune removed %d rows; want 0", n)
		}
	}},
	{"audit/actor_filter_matches_owner_part", func(t *testing.T, e *env) {
		for _, a := range []string{"alice (token 1)", "alice_b (token 2)", "al%ce (token 3)", "alice"} {
			if _, err := e.s.BeginAudit(ctx, store.AuditEntry{Actor: a, Action: "vm.stop", Resource: "vm"}); err != nil {
				t.Fatal(err)
			}
		}
		for _, tc := range []struct {
			filter string
			want   []string
		}{
			{"alice", []string{"alice (token 1)", "alice"}},
			{"al%ce", []string{"al%ce (token 3)"}},
			{"alice_b (token 2)", []string{"alice_b (token 2)"}},
			{"al_ce", nil},
		} {
			rows, err := e.s.ListAudit(ctx, store.AuditFilter{Actor: tc.filter})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rows {
				got = append(got, r.Actor)
			}
			if len(got) != len(tc.want) || (len(got) > 0 && diff(tc.want, got) != "") {
				t.Errorf("actor %q matched %q; want %q", tc.filter, got, tc.want)
			}
		}
	}},
	{"audit/lifecycle", func(t *testing.T, e *env) {
		begin := func(actor, action, resID string) int64 {
			id, err := e.s.BeginAudit(ctx, store.AuditEntry{
				Actor: actor, Action: action, Resource: "vm", ResourceID: resID, RequestID: "req-" + action,
				Before: json.RawMessage(`{"state":"running"}`),
				// Ignored: Begin always records pending.
				Result: store.AuditSuccess, After: json.RawMessage(`{"x":1}`),
			})
			if err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(time.Second)
			return id
		}
		a := begin("alice", "vm.stop", "vm-1")
		b := begin("bob", "vm.delete", "vm-2")
		c := begin("alice", "vm.start", "vm-1")
		if !(a < b && b < c) {
			t.Fatalf("ids %d %d %d; want increasing", a, b, c)
		}
		got := must(e.s.GetAudit(ctx, a))(t)
		if got.Result != store.AuditPending || got.After != nil || got.CompletedAt != nil || !sameJSON(got.Before, json.RawMessage(`{"state":"running"}`)) {
			t.Fatalf("begun entry = %+v; want pending with before only", got)
		}

		if err := e.s.CompleteAudit(ctx, a, store.AuditSuccess, json.RawMessage(`{"state":"stopped"}`), ""); err != nil {
			t.Fatal(err)
		}
		if err := e.s.CompleteAudit(ctx, b, store.AuditDenied, nil, "role viewer may not delete"); err != nil {
			t.Fatal(err)
		}
		got = must(e.s.GetAudit(ctx, a))(t)
		if got.Result != store.AuditSuccess || !sameJSON(got.After, json.RawMessage(`{"state":"stopped"}`)) || got.CompletedAt == nil {
			t.Fatalf("completed entry = %+v", got)
		}
		if got := must(e.s.GetAudit(ctx, b))(t); got.Result != store.AuditDenied || got.Error != "role viewer may not delete" || got.After != nil {
			t.Fatalf("denied entry = %+v", got)
		}
		wantErr(t, "complete twice", e.s.CompleteAudit(ctx, a, store.AuditFailure, nil, "late"), store.ErrConflict)
		wantErr(t, "complete unknown", e.s.CompleteAudit(ctx, 999999, store.AuditSuccess, nil, ""), store.ErrNotFound)
		wantErr(t, "complete as pending", e.s.CompleteAudit(ctx, c, store.AuditPending, nil, ""), store.ErrInvalid)
		wantErr(t, "unknown result", e.s.CompleteAudit(ctx, c, "maybe", nil, ""), store.ErrInvalid)
		if got := must(e.s.GetAudit(ctx, c))(t); got.Result != store.AuditPending {
			t.Fatalf("rejected completions changed entry %d to %s", c, got.Result)
		}

		ids := func(es []store.AuditEntry) []int64 {
			var out []int64
			for _, e := range es {
				out = append(out, e.ID)
			}
			return out
		}
		start := e.clock.Now().Add(-3 * time.Second)
		for _, tc := range []struct {
			f    store.AuditFilter
			want []int64
		}{
			{store.AuditFilter{}, []int64{a, b, c}},
			{store.AuditFilter{ResourceID: "vm-1"}, []int64{a, c}},
			{store.AuditFilter{Actor: "bob"}, []int64{b}},
			{store.AuditFilter{Resource: "vm", Actor: "alice"}, []int64{a, c}},
			{store.AuditFilter{Since: start.Add(time.Second)}, []int64{b, c}},
			{store.AuditFilter{AfterID: a, Limit: 1}, []int64{b}},
			{store.AuditFilter{ResourceID: "none"}, nil},
		} {
			if d := diff(tc.want, ids(must(e.s.ListAudit(ctx, tc.f))(t))); d != "" {
				t.Errorf("ListAudit(%+v) (-want +got):\n%s", tc.f, d)
			}
		}
		_, err := e.s.GetAudit(ctx, 424242)
		wantErr(t, "GetAudit unknown", err, store.ErrNotFound)
	}},

	{"audit/pending_survives", func(t *testing.T, e *env) {
		// A call that began and never completed (the process died) stays
		// visible as pending to everyone else.
		other, err := store.Open(ctx, e.dsn)
		if err != nil {
			t.Fatal(err)
		}
		id, err := other.BeginAudit(ctx, store.AuditEntry{Actor: "alice", Action: "vm.create", Resource: "vm", RequestID: "req-1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Close(); err != nil {
			t.Fatal(err)
		}
		got := must(e.s.ListAudit(ctx, store.AuditFilter{Actor: "alice"}))(t)
		if len(got) != 1 || got[0].ID != id || got[0].Result != store.AuditPending || got[0].CompletedAt != nil {
			t.Fatalf("after the writer closed: %+v; want entry %d pending", got, id)
		}
	}},
}
