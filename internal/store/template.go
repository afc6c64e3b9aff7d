package store

import (
	"context"
	"database/sql"
)

const templateSelect = "SELECT id, name, project, owner, config, created_at FROM template"

func scanTemplate(sc scanner) (Template, error) {
	var t Template
	err := sc.Scan(&t.ID, &t.Name, &t.Project, &t.Owner, rawCol{&t.Config}, timeCol{&t.CreatedAt})
	return t, err
}

func (s *sqlStore) CreateTemplate(ctx context.Context, t Template) (Template, error) {
	op := "create template " + qualified(t.Project, t.Name)
	if t.ID == "" {
		t.ID = newID()
	}
	t.CreatedAt = s.orNow(t.CreatedAt)
	cfg, err := rawArg("config", t.Config, "{}")
	if err != nil {
		return Template{}, s.fail(op, err)
	}
	if len(t.Config) == 0 {
		t.Config = []byte("{}")
	}
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.withinQuota(ctx, tx, t.Project, Usage{Templates: 1}); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx, "INSERT INTO template (id, name, project, owner, config, created_at) VALUES (?, ?, ?, ?, ?, ?)",
			t.ID, t.Name, t.Project, t.Owner, cfg, s.ts(t.CreatedAt))
		return err
	})
	if err != nil {
		return Template{}, s.fail(op, err)
	}
	return t, nil
}

func (s *sqlStore) GetTemplate(ctx context.Context, id string) (Template, error) {
	t, err := scanTemplate(s.queryRow(ctx, templateSelect+" WHERE id = ?", id))
	if err != nil {
		return Template{}, s.fail("get template "+id, err)
	}
	return t, nil
}

func (s *sqlStore) GetTemplateByName(ctx context.Context, project, name string) (Template, error) {
	t, err := scanTemplate(s.queryRow(ctx, templateSelect+" WHERE project = ? AND name = ?", project, name))
	if err != nil {
		return Template{}, s.fail("get template "+qualified(project, name), err)
	}
	return t, nil
}

func (s *sqlStore) ListTemplates(ctx context.Context, f TemplateFilter) ([]Template, error) {
	var conds []string
	var args []any
	if f.Project != "" {
		conds, args = append(conds, "project = ?"), append(args, f.Project)
	}
	ts, err := queryAll(ctx, s, scanTemplate, templateSelect+where(conds)+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, s.fail("list templates", err)
	}
	return ts, nil
}

func (s *sqlStore) DeleteTemplate(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM template WHERE id = ?", id)); err != nil {
		return s.fail("delete template "+id, err)
	}
	return nil
}
