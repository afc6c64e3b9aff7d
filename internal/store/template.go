package store

import (
	"context"
	"database/sql"
	"encoding/json"
)

const templateSelect = "SELECT id, name, project, owner, config, created_at, version FROM template"

func scanTemplate(sc scanner) (Template, error) {
	var t Template
	err := sc.Scan(&t.ID, &t.Name, &t.Project, &t.Owner, rawCol{&t.Config}, timeCol{&t.CreatedAt}, &t.Version)
	return t, err
}

const templateVersionSelect = "SELECT template_id, version, config, owner, created_at FROM template_version"

func scanTemplateVersion(sc scanner) (TemplateVersion, error) {
	var v TemplateVersion
	err := sc.Scan(&v.TemplateID, &v.Version, rawCol{&v.Config}, &v.Owner, timeCol{&v.CreatedAt})
	return v, err
}

// CreateTemplate stores the template and its config as version 1.
func (s *sqlStore) CreateTemplate(ctx context.Context, t Template) (Template, error) {
	op := "create template " + qualified(t.Project, t.Name)
	if t.ID == "" {
		t.ID = newID()
	}
	t.CreatedAt = s.orNow(t.CreatedAt)
	t.Version = 1
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
		if _, err := s.txExec(ctx, tx,
			"INSERT INTO template (id, name, project, owner, config, created_at, version) VALUES (?, ?, ?, ?, ?, ?, ?)",
			t.ID, t.Name, t.Project, t.Owner, cfg, s.ts(t.CreatedAt), t.Version); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx,
			"INSERT INTO template_version (template_id, version, config, owner, created_at) VALUES (?, ?, ?, ?, ?)",
			t.ID, t.Version, cfg, t.Owner, s.ts(t.CreatedAt))
		return err
	})
	if err != nil {
		return Template{}, s.fail(op, err)
	}
	return t, nil
}

func (s *sqlStore) UpdateTemplate(ctx context.Context, id, owner string, config json.RawMessage) (Template, error) {
	op := "update template " + id
	cfg, err := rawArg("config", config, "{}")
	if err != nil {
		return Template{}, s.fail(op, err)
	}
	now := s.now()
	var t Template
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		// The row lock (Postgres) or the write transaction (SQLite)
		// serialises concurrent updates, so versions never collide.
		var v int
		if err := s.txQueryRow(ctx, tx, "UPDATE template SET config = ?, version = version + 1 WHERE id = ? RETURNING version",
			cfg, id).Scan(&v); err != nil {
			return err
		}
		if _, err := s.txExec(ctx, tx,
			"INSERT INTO template_version (template_id, version, config, owner, created_at) VALUES (?, ?, ?, ?, ?)",
			id, v, cfg, owner, s.ts(now)); err != nil {
			return err
		}
		var err error
		t, err = scanTemplate(s.txQueryRow(ctx, tx, templateSelect+" WHERE id = ?", id))
		return err
	})
	if err != nil {
		return Template{}, s.fail(op, err)
	}
	return t, nil
}

func (s *sqlStore) ListTemplateVersions(ctx context.Context, id string, before, limit int) ([]TemplateVersion, error) {
	conds, args := []string{"template_id = ?"}, []any{id}
	if before > 0 {
		conds, args = append(conds, "version < ?"), append(args, before)
	}
	args = append(args, limit)
	vs, err := queryAll(ctx, s, scanTemplateVersion, templateVersionSelect+where(conds)+" ORDER BY version DESC LIMIT ?", args...)
	if err != nil {
		return nil, s.fail("list versions of template "+id, err)
	}
	return vs, nil
}

func (s *sqlStore) GetTemplateVersion(ctx context.Context, id string, version int) (TemplateVersion, error) {
	v, err := scanTemplateVersion(s.queryRow(ctx, templateVersionSelect+" WHERE template_id = ? AND version = ?", id, version))
	if err != nil {
		return TemplateVersion{}, s.fail("get version of template "+id, err)
	}
	return v, nil
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
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := mustAffect(s.txExec(ctx, tx, "DELETE FROM template WHERE id = ?", id)); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx, "DELETE FROM template_version WHERE template_id = ?", id)
		return err
	})
	if err != nil {
		return s.fail("delete template "+id, err)
	}
	return nil
}
