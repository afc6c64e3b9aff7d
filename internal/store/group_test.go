package store_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

// TestGroupRolloutStore: a group rollout and its VMs round-trip on every
// engine; one active rollout per group; state moves are conditional.
func TestGroupRolloutStore(t *testing.T) {
	for _, eng := range engines {
		t.Run(eng.name, func(t *testing.T) {
			clk := &fakeClock{now: time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)}
			s := openStore(t, eng.fresh(t), store.WithClock(clk.Now))
			_, err := s.LatestGroupRollout(ctx, "t1", "ci")
			wantErr(t, "LatestGroupRollout of a group without one", err, store.ErrNotFound)
			r := store.GroupRollout{Project: "p1", TemplateID: "t1", Group: "ci", ToVersion: 3, Canary: 1, MaxParallel: 2,
				MinHealthy: 1500 * time.Millisecond, ProgressDeadline: time.Minute, AutoRevert: true, State: "running", Phase: "canary", Actor: "alice"}
			vms := []store.GroupRolloutVM{
				{VMID: "vm-b", Position: 0, FromVersion: 1, Restart: true, OldConfig: json.RawMessage(`{"mem_mib":64}`), State: "pending"},
				{VMID: "vm-a", Position: 1, FromVersion: 2, Restart: false, OldConfig: json.RawMessage(`{"mem_mib":96}`), State: "pending"},
			}
			r1 := must(s.CreateGroupRollout(ctx, r, vms))(t)
			if d := diff(r1, must(s.GetGroupRollout(ctx, r1.ID))(t)); d != "" {
				t.Fatalf("GetGroupRollout (-create +get):\n%s", d)
			}
			got := must(s.ListGroupRolloutVMs(ctx, r1.ID))(t)
			if len(got) != 2 || got[0].VMID != "vm-b" || !got[0].Restart || got[1].Restart || string(got[1].OldConfig) != `{"mem_mib":96}` || got[1].FromVersion != 2 {
				t.Fatalf("ListGroupRolloutVMs = %+v; want both in their order as stored", got)
			}
			_, err = s.CreateGroupRollout(ctx, r, vms)
			wantErr(t, "a second active rollout of the group", err, store.ErrConflict)
			other := r
			other.Group, other.AutoPromote = "nightly", true
			o := must(s.CreateGroupRollout(ctx, other, nil))(t) // another group of the template
			if got := must(s.GetGroupRollout(ctx, o.ID))(t); !got.AutoPromote || r1.AutoPromote {
				t.Fatalf("auto_promote: %t and %t; want true and false as stored", got.AutoPromote, r1.AutoPromote)
			}
			if active := must(s.ListActiveGroupRollouts(ctx))(t); len(active) != 2 {
				t.Fatalf("ListActiveGroupRollouts = %d; want 2", len(active))
			}
			// Awaiting promotion is active: listed, and a second rollout of
			// the group is refused.
			must(s.SetGroupRolloutState(ctx, o.ID, []string{"running"}, "awaiting_promotion", "canary", ""))(t)
			if active := must(s.ListActiveGroupRollouts(ctx))(t); len(active) != 2 {
				t.Fatalf("ListActiveGroupRollouts with one awaiting promotion = %d; want 2", len(active))
			}
			_, err = s.CreateGroupRollout(ctx, other, nil)
			wantErr(t, "a second rollout of a group awaiting promotion", err, store.ErrConflict)
			must(s.SetGroupRolloutState(ctx, o.ID, []string{"awaiting_promotion"}, "running", "rolling", "promote requested"))(t)
			clk.Advance(time.Second)
			if err := s.SetGroupRolloutVM(ctx, r1.ID, "vm-a", "moved", "on version 3"); err != nil {
				t.Fatal(err)
			}
			wantErr(t, "SetGroupRolloutVM of a VM not in the rollout", s.SetGroupRolloutVM(ctx, r1.ID, "vm-x", "moved", ""), store.ErrNotFound)
			if got := must(s.ListGroupRolloutVMs(ctx, r1.ID))(t); got[1].State != "moved" || got[1].Message != "on version 3" || !got[1].UpdatedAt.After(r1.CreatedAt) {
				t.Fatalf("after SetGroupRolloutVM: %+v", got[1])
			}
			p := must(s.SetGroupRolloutState(ctx, r1.ID, []string{"running"}, "paused", "canary", "pause requested"))(t)
			if p.State != "paused" || p.Message != "pause requested" || !p.UpdatedAt.After(r1.UpdatedAt) {
				t.Fatalf("SetGroupRolloutState = %+v", p)
			}
			if active := must(s.ListActiveGroupRollouts(ctx))(t); len(active) != 1 {
				t.Fatalf("ListActiveGroupRollouts with one paused = %d; want 1 (the loop drives running and reverting only)", len(active))
			}
			_, err = s.SetGroupRolloutState(ctx, r1.ID, []string{"running"}, "aborted", "abort", "")
			wantErr(t, "SetGroupRolloutState from a state it is not in", err, store.ErrConflict)
			_, err = s.SetGroupRolloutState(ctx, "missing", []string{"running"}, "aborted", "abort", "")
			wantErr(t, "SetGroupRolloutState of a missing rollout", err, store.ErrNotFound)
			must(s.SetGroupRolloutState(ctx, r1.ID, []string{"paused"}, "aborted", "abort", ""))(t)
			clk.Advance(time.Second)
			r2 := must(s.CreateGroupRollout(ctx, r, vms))(t) // the first is over
			if got := must(s.LatestGroupRollout(ctx, "t1", "ci"))(t); got.ID != r2.ID {
				t.Fatalf("LatestGroupRollout = %s; want the second, %s", got.ID, r2.ID)
			}
		})
	}
}
