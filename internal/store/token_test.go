package store_test

import (
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var tokenBehaviours = []behaviour{
	{"token/lifecycle", func(t *testing.T, e *env) {
		tok := must(e.s.CreateToken(ctx, store.APIToken{Prefix: "nx_abc123", Hash: "h1", Owner: "alice", Role: "operator", Project: "p1"}))(t)
		if tok.ID == "" || tok.LastUsedAt != nil || tok.RevokedAt != nil {
			t.Fatalf("CreateToken = %+v", tok)
		}
		if d := diff(tok, must(e.s.GetTokenByPrefix(ctx, "nx_abc123"))(t)); d != "" {
			t.Fatalf("GetTokenByPrefix (-create +get):\n%s", d)
		}
		_, err := e.s.CreateToken(ctx, store.APIToken{Prefix: "nx_abc123", Hash: "h2", Owner: "bob", Role: "viewer"})
		wantErr(t, "duplicate prefix", err, store.ErrConflict)
		_, err = e.s.GetTokenByPrefix(ctx, "nx_nope")
		wantErr(t, "unknown prefix", err, store.ErrNotFound)
		admin := must(e.s.CreateToken(ctx, store.APIToken{Prefix: "nx_admin", Hash: "h3", Owner: "root", Role: "admin"}))(t)

		// Batched last-use: times only move forward, unknown ids are ignored.
		t1 := e.clock.Now().Add(time.Minute)
		if err := e.s.TouchTokens(ctx, map[string]time.Time{tok.ID: t1, admin.ID: t1, "deleted": t1}); err != nil {
			t.Fatal(err)
		}
		if err := e.s.TouchTokens(ctx, map[string]time.Time{tok.ID: t1.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if got := must(e.s.GetToken(ctx, tok.ID))(t); got.LastUsedAt == nil || !got.LastUsedAt.Equal(t1.Truncate(time.Microsecond)) {
			t.Fatalf("LastUsedAt = %v; want %v", got.LastUsedAt, t1)
		}

		// Rotation replaces prefix and hash.
		rot := must(e.s.UpdateTokenHash(ctx, tok.ID, "nx_def456", "h1b"))(t)
		if rot.Prefix != "nx_def456" || rot.Hash != "h1b" || rot.ID != tok.ID {
			t.Fatalf("UpdateTokenHash = %+v", rot)
		}
		_, err = e.s.GetTokenByPrefix(ctx, "nx_abc123")
		wantErr(t, "old prefix after rotation", err, store.ErrNotFound)
		_, err = e.s.UpdateTokenHash(ctx, tok.ID, "nx_admin", "x")
		wantErr(t, "rotate onto a taken prefix", err, store.ErrConflict)
		_, err = e.s.UpdateTokenHash(ctx, "nope", "nx_x", "x")
		wantErr(t, "rotate unknown token", err, store.ErrNotFound)

		// Revocation is idempotent and keeps the first time.
		if err := e.s.RevokeToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		first := must(e.s.GetToken(ctx, tok.ID))(t).RevokedAt
		e.clock.Advance(time.Hour)
		if err := e.s.RevokeToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		if again := must(e.s.GetToken(ctx, tok.ID))(t).RevokedAt; first == nil || again == nil || !again.Equal(*first) {
			t.Fatalf("revoked at %v, then %v; want the first time kept", first, again)
		}
		wantErr(t, "revoke unknown token", e.s.RevokeToken(ctx, "nope"), store.ErrNotFound)
		_, err = e.s.UpdateTokenHash(ctx, tok.ID, "nx_ghi", "x")
		wantErr(t, "rotate a revoked token", err, store.ErrConflict)
		if got := must(e.s.GetTokenByPrefix(ctx, "nx_def456"))(t); got.RevokedAt == nil {
			t.Fatal("GetTokenByPrefix hides that the token is revoked")
		}

		if got := must(e.s.ListTokens(ctx, store.TokenFilter{}))(t); len(got) != 1 || got[0].ID != admin.ID {
			t.Fatalf("ListTokens() = %+v; want only the active admin token", got)
		}
		if got := must(e.s.ListTokens(ctx, store.TokenFilter{IncludeRevoked: true}))(t); len(got) != 2 {
			t.Fatalf("ListTokens(revoked too) = %d; want 2", len(got))
		}
		if got := must(e.s.ListTokens(ctx, store.TokenFilter{Owner: "alice", IncludeRevoked: true}))(t); len(got) != 1 {
			t.Fatalf("ListTokens(alice) = %d; want 1", len(got))
		}
		if got := must(e.s.ListTokens(ctx, store.TokenFilter{Project: "p1"}))(t); len(got) != 0 {
			t.Fatalf("ListTokens(p1, active) = %d; want 0", len(got))
		}
	}},
}
