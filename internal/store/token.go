package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

const tokenColumns = "id, prefix, hash, owner, role, project, created_at, last_used_at, revoked_at"

func scanToken(sc scanner) (APIToken, error) {
	var t APIToken
	err := sc.Scan(&t.ID, &t.Prefix, &t.Hash, &t.Owner, &t.Role, &t.Project,
		timeCol{&t.CreatedAt}, nullTimeCol{&t.LastUsedAt}, nullTimeCol{&t.RevokedAt})
	return t, err
}

func (s *sqlStore) CreateToken(ctx context.Context, t APIToken) (APIToken, error) {
	if t.ID == "" {
		t.ID = newID()
	}
	t.CreatedAt = s.orNow(t.CreatedAt)
	t.LastUsedAt, t.RevokedAt = normTimePtr(t.LastUsedAt), normTimePtr(t.RevokedAt)
	_, err := s.exec(ctx,
		"INSERT INTO api_token ("+tokenColumns+") VALUES ("+placeholders(9)+")",
		t.ID, t.Prefix, t.Hash, t.Owner, t.Role, t.Project, s.ts(t.CreatedAt), s.tsPtr(t.LastUsedAt), s.tsPtr(t.RevokedAt))
	if err != nil {
		// The message names the owner, never the prefix: half a secret is
		// still not for logs.
		return APIToken{}, s.fail("create token "+t.ID+" for "+t.Owner, err)
	}
	return t, nil
}

func (s *sqlStore) GetToken(ctx context.Context, id string) (APIToken, error) {
	t, err := scanToken(s.queryRow(ctx, "SELECT "+tokenColumns+" FROM api_token WHERE id = ?", id))
	if err != nil {
		return APIToken{}, s.fail("get token "+id, err)
	}
	return t, nil
}

func (s *sqlStore) GetTokenByPrefix(ctx context.Context, prefix string) (APIToken, error) {
	t, err := scanToken(s.queryRow(ctx, "SELECT "+tokenColumns+" FROM api_token WHERE prefix = ?", prefix))
	if err != nil {
		return APIToken{}, s.fail("get token by prefix", err)
	}
	return t, nil
}

func (s *sqlStore) ListTokens(ctx context.Context, f TokenFilter) ([]APIToken, error) {
	var conds []string
	var args []any
	if f.Owner != "" {
		conds, args = append(conds, "owner = ?"), append(args, f.Owner)
	}
	if f.Project != "" {
		conds, args = append(conds, "project = ?"), append(args, f.Project)
	}
	if !f.IncludeRevoked {
		conds = append(conds, "revoked_at IS NULL")
	}
	ts, err := queryAll(ctx, s, scanToken, "SELECT "+tokenColumns+" FROM api_token"+where(conds)+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, s.fail("list tokens", err)
	}
	return ts, nil
}

func (s *sqlStore) RevokeToken(ctx context.Context, id string) error {
	err := mustAffect(s.exec(ctx, "UPDATE api_token SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", s.ts(s.now()), id))
	if err != nil {
		return s.fail("revoke token "+id, err)
	}
	return nil
}

func (s *sqlStore) UpdateTokenHash(ctx context.Context, id, prefix, hash string) (APIToken, error) {
	op := "rotate token " + id
	t, err := scanToken(s.writeRow(ctx,
		"UPDATE api_token SET prefix = ?, hash = ? WHERE id = ? AND revoked_at IS NULL RETURNING "+tokenColumns,
		prefix, hash, id))
	if errors.Is(err, sql.ErrNoRows) {
		// Missing, or revoked: tell which.
		if _, gerr := s.GetToken(ctx, id); gerr != nil {
			return APIToken{}, s.fail(op, gerr)
		}
		return APIToken{}, fmt.Errorf("%s: token is revoked: %w", op, ErrConflict)
	}
	if err != nil {
		return APIToken{}, s.fail(op, err)
	}
	return t, nil
}

func (s *sqlStore) TouchTokens(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, s.d.rebind(
			"UPDATE api_token SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"))
		if err != nil {
			return err
		}
		defer stmt.Close()
		for id, at := range used {
			t := s.ts(at)
			if _, err := stmt.ExecContext(ctx, t, id, t); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return s.fail(fmt.Sprintf("touch %d tokens", len(used)), err)
	}
	return nil
}
