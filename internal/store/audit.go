package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

const auditColumns = "id, at, actor, action, resource, resource_id, request_id, result, before, after, error, completed_at"

func scanAudit(sc scanner) (AuditEntry, error) {
	var e AuditEntry
	err := sc.Scan(&e.ID, timeCol{&e.At}, &e.Actor, &e.Action, &e.Resource, &e.ResourceID, &e.RequestID, &e.Result,
		rawCol{&e.Before}, rawCol{&e.After}, &e.Error, nullTimeCol{&e.CompletedAt})
	return e, err
}

func (s *sqlStore) BeginAudit(ctx context.Context, e AuditEntry) (int64, error) {
	op := "begin audit of " + e.Action + " " + e.Resource + " " + e.ResourceID
	before, err := rawArg("before", e.Before, "")
	if err != nil {
		return 0, s.fail(op, err)
	}
	var id int64
	err = s.writeRow(ctx,
		"INSERT INTO audit (at, actor, action, resource, resource_id, request_id, result, before)"+
			" VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) RETURNING id",
		s.ts(s.orNow(e.At)), e.Actor, e.Action, e.Resource, e.ResourceID, e.RequestID, before,
	).Scan(&id)
	if err != nil {
		return 0, s.fail(op, err)
	}
	return id, nil
}

func (s *sqlStore) CompleteAudit(ctx context.Context, id int64, result AuditResult, after json.RawMessage, errText string) error {
	op := "complete audit " + strconv.FormatInt(id, 10)
	if result == AuditPending {
		return s.fail(op, invalidf("result must not be %q", AuditPending))
	}
	afterArg, err := rawArg("after", after, "")
	if err != nil {
		return s.fail(op, err)
	}
	// Only a pending entry may complete: the trail is append-only.
	err = mustAffect(s.exec(ctx,
		"UPDATE audit SET result = ?, after = ?, error = ?, completed_at = ? WHERE id = ? AND result = 'pending'",
		string(result), afterArg, errText, s.ts(s.now()), id))
	if errors.Is(err, sql.ErrNoRows) {
		if _, gerr := s.GetAudit(ctx, id); gerr != nil {
			return s.fail(op, gerr)
		}
		return fmt.Errorf("%s: already completed: %w", op, ErrConflict)
	}
	if err != nil {
		return s.fail(op, err)
	}
	return nil
}

func (s *sqlStore) GetAudit(ctx context.Context, id int64) (AuditEntry, error) {
	e, err := scanAudit(s.queryRow(ctx, "SELECT "+auditColumns+" FROM audit WHERE id = ?", id))
	if err != nil {
		return AuditEntry{}, s.fail("get audit "+strconv.FormatInt(id, 10), err)
	}
	return e, nil
}

func (s *sqlStore) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	var conds []string
	var args []any
	add := func(cond string, a any) {
		conds, args = append(conds, cond), append(args, a)
	}
	if f.ResourceID != "" {
		add("resource_id = ?", f.ResourceID)
	}
	if f.Resource != "" {
		add("resource = ?", f.Resource)
	}
	if f.Actor != "" {
		// The whole actor, or its owner part: "alice" matches
		// "alice (token 3f2a…)".
		conds = append(conds, `(actor = ? OR actor LIKE ? ESCAPE '\')`)
		args = append(args, f.Actor, likeEscaper.Replace(f.Actor)+" (%")
	}
	if !f.Since.IsZero() {
		add("at >= ?", s.ts(f.Since))
	}
	if f.AfterID > 0 {
		add("id > ?", f.AfterID)
	}
	q := "SELECT " + auditColumns + " FROM audit" + where(conds) + " ORDER BY id LIMIT ?"
	args = append(args, clampLimit(f.Limit))
	es, err := queryAll(ctx, s, scanAudit, q, args...)
	if err != nil {
		return nil, s.fail("list audit", err)
	}
	return es, nil
}

var likeEscaper = strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`)
