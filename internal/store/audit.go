package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const auditColumns = "id, at, actor, action, resource, resource_id, request_id, result, before, after, error, completed_at, source, count"

func scanAudit(sc scanner) (AuditEntry, error) {
	var e AuditEntry
	err := sc.Scan(&e.ID, timeCol{&e.At}, &e.Actor, &e.Action, &e.Resource, &e.ResourceID, &e.RequestID, &e.Result,
		rawCol{&e.Before}, rawCol{&e.After}, &e.Error, nullTimeCol{&e.CompletedAt}, &e.Source, &e.Count)
	return e, err
}

// clip cuts s to at most n bytes, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// bounded returns e with every caller-influenced field cut to its bound
// (MaxAudit…): whatever a request carries, a row stays small.
func (e AuditEntry) bounded() AuditEntry {
	e.Actor = clip(e.Actor, MaxAuditActor)
	e.Action = clip(e.Action, MaxAuditAction)
	e.Resource = clip(e.Resource, MaxAuditResource)
	e.ResourceID = clip(e.ResourceID, MaxAuditResourceID)
	e.RequestID = clip(e.RequestID, MaxAuditRequestID)
	e.Source = clip(e.Source, MaxAuditSource)
	e.Error = clip(e.Error, MaxAuditError)
	return e
}

func (s *sqlStore) BeginAudit(ctx context.Context, e AuditEntry) (int64, error) {
	e = e.bounded()
	op := "begin audit of " + e.Action + " " + e.Resource + " " + e.ResourceID
	before, err := rawArg("before", e.Before, "")
	if err != nil {
		return 0, s.fail(op, err)
	}
	var id int64
	err = s.writeRow(ctx,
		"INSERT INTO audit (at, actor, action, resource, resource_id, request_id, result, before, source)"+
			" VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
		s.ts(s.orNow(e.At)), e.Actor, e.Action, e.Resource, e.ResourceID, e.RequestID, before, e.Source,
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
		string(result), afterArg, clip(errText, MaxAuditError), s.ts(s.now()), id))
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

func (s *sqlStore) CountDenial(ctx context.Context, e AuditEntry) error {
	e = e.bounded()
	at := s.orNow(e.At)
	window := at.Truncate(time.Minute)
	// One statement on both engines: the partial unique index on (source,
	// action, window_start) turns the second insert of a minute into an
	// increment, also between managers sharing the database.
	_, err := s.exec(ctx,
		"INSERT INTO audit (at, actor, action, resource, resource_id, request_id, result, error, completed_at, source, count, window_start)"+
			" VALUES (?, ?, ?, ?, ?, ?, 'denied', ?, ?, ?, 1, ?)"+
			" ON CONFLICT (source, action, window_start) WHERE window_start IS NOT NULL"+
			" DO UPDATE SET count = audit.count + 1, completed_at = excluded.completed_at",
		s.ts(at), e.Actor, e.Action, e.Resource, e.ResourceID, e.RequestID, e.Error, s.ts(at), e.Source, s.ts(window))
	if err != nil {
		return s.fail("count denial of "+e.Action+" from "+e.Source, err)
	}
	return nil
}

// pruneBatch bounds one DELETE of PruneAudit, so a first prune of a large
// trail holds no lock for long.
const pruneBatch = 5000

func (s *sqlStore) PruneAudit(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		res, err := s.exec(ctx,
			"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY id LIMIT ?)",
			s.ts(cutoff), pruneBatch)
		if err != nil {
			return total, s.fail("prune audit", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, s.fail("prune audit", err)
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
	}
}

var likeEscaper = strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`)
