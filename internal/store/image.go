package store

import (
	"context"
	"database/sql"
)

const imageSelect = "SELECT id, project, kind, name, host_path, sha256, size, read_only, created_at FROM image"

func scanImage(sc scanner) (Image, error) {
	var i Image
	err := sc.Scan(&i.ID, &i.Project, &i.Kind, &i.Name, &i.HostPath, &i.SHA256, &i.Size, &i.ReadOnly, timeCol{&i.CreatedAt})
	return i, err
}

func (s *sqlStore) CreateImage(ctx context.Context, img Image) (Image, error) {
	if img.ID == "" {
		img.ID = newID()
	}
	img.CreatedAt = s.orNow(img.CreatedAt)
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.withinQuota(ctx, tx, img.Project, Usage{Images: 1}); err != nil {
			return err
		}
		_, err := s.txExec(ctx, tx, "INSERT INTO image (id, project, kind, name, host_path, sha256, size, read_only, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
			img.ID, img.Project, string(img.Kind), img.Name, img.HostPath, img.SHA256, img.Size, img.ReadOnly, s.ts(img.CreatedAt))
		return err
	})
	if err != nil {
		return Image{}, s.fail("create image "+qualified(img.Project, img.Name), err)
	}
	return img, nil
}

func (s *sqlStore) GetImage(ctx context.Context, id string) (Image, error) {
	img, err := scanImage(s.queryRow(ctx, imageSelect+" WHERE id = ?", id))
	if err != nil {
		return Image{}, s.fail("get image "+id, err)
	}
	return img, nil
}

func (s *sqlStore) GetImageByName(ctx context.Context, project, name string) (Image, error) {
	img, err := scanImage(s.queryRow(ctx, imageSelect+" WHERE project = ? AND name = ?", project, name))
	if err != nil {
		return Image{}, s.fail("get image "+qualified(project, name), err)
	}
	return img, nil
}

func (s *sqlStore) ListImages(ctx context.Context, f ImageFilter) ([]Image, error) {
	var conds []string
	var args []any
	switch {
	case f.Project != "" && f.IncludeGlobal:
		conds, args = append(conds, "project IN (?, '')"), append(args, f.Project)
	case f.Project != "":
		conds, args = append(conds, "project = ?"), append(args, f.Project)
	}
	if f.Kind != "" {
		conds, args = append(conds, "kind = ?"), append(args, string(f.Kind))
	}
	imgs, err := queryAll(ctx, s, scanImage, imageSelect+where(conds)+" ORDER BY created_at, id", args...)
	if err != nil {
		return nil, s.fail("list images", err)
	}
	return imgs, nil
}

func (s *sqlStore) DeleteImage(ctx context.Context, id string) error {
	if err := mustAffect(s.exec(ctx, "DELETE FROM image WHERE id = ?", id)); err != nil {
		return s.fail("delete image "+id, err)
	}
	return nil
}
