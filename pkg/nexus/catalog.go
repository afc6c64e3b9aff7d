package nexus

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// project is the query of calls that look a name up in a project
// (default: the token's project).
func project(p string) url.Values {
	if p == "" {
		return nil
	}
	return url.Values{"project": {p}}
}

// CreateImage registers a kernel or rootfs file under FC_IMAGES_DIR; it is
// checksummed on every ready host before the answer.
func (c *Client) CreateImage(ctx context.Context, req apitypes.CreateImageRequest) (apitypes.Image, error) {
	var out apitypes.ImageCreated
	return out.Item, c.Do(ctx, http.MethodPost, "/v1/images", nil, req, &out)
}

// ListImages lists the images a project can use (its own and the shared
// ones); kind "kernel" or "rootfs" filters, "" does not.
func (c *Client) ListImages(ctx context.Context, projectName, kind string) (apitypes.ImageList, error) {
	q := url.Values{}
	if projectName != "" {
		q.Set("project", projectName)
	}
	if kind != "" {
		q.Set("kind", kind)
	}
	var l apitypes.ImageList
	return l, c.Do(ctx, http.MethodGet, "/v1/images", q, nil, &l)
}

// GetImage returns an image by id, or by name in projectName (default: the
// token's project; shared images are found too).
func (c *Client) GetImage(ctx context.Context, ref, projectName string) (apitypes.Image, error) {
	var it apitypes.ImageItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/images/", ref), project(projectName), nil, &it)
}

// DeleteImage removes an image from the registry (refused with 409 while
// VMs or templates use it); the file stays.
func (c *Client) DeleteImage(ctx context.Context, ref, projectName string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/images/", ref), project(projectName), nil, nil)
}

// CreateTemplate saves a VM configuration under a name.
func (c *Client) CreateTemplate(ctx context.Context, req apitypes.CreateTemplateRequest) (apitypes.Template, error) {
	var out apitypes.TemplateCreated
	return out.Item, c.Do(ctx, http.MethodPost, "/v1/templates", nil, req, &out)
}

// ListTemplates lists a project's templates (default: the token's).
func (c *Client) ListTemplates(ctx context.Context, projectName string) (apitypes.TemplateList, error) {
	var l apitypes.TemplateList
	return l, c.Do(ctx, http.MethodGet, "/v1/templates", project(projectName), nil, &l)
}

// GetTemplate returns a template by id, or by name in projectName.
func (c *Client) GetTemplate(ctx context.Context, ref, projectName string) (apitypes.Template, error) {
	var it apitypes.TemplateItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/templates/", ref), project(projectName), nil, &it)
}

// DeleteTemplate deletes a template; its VMs keep their configuration.
func (c *Client) DeleteTemplate(ctx context.Context, ref, projectName string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/templates/", ref), project(projectName), nil, nil)
}

// UpdateTemplate replaces a template's config; it becomes the template's
// next version (the answer carries its number).
func (c *Client) UpdateTemplate(ctx context.Context, ref, projectName string, req apitypes.UpdateTemplateRequest) (apitypes.Template, error) {
	var it apitypes.TemplateItem
	return it.Item, c.Do(ctx, http.MethodPut, path("/v1/templates/", ref), project(projectName), req, &it)
}

// ListTemplateVersions lists up to limit versions of a template (0: the
// server's default of 100), newest first, those below before when before
// > 0; NextBefore of the answer pages on.
func (c *Client) ListTemplateVersions(ctx context.Context, ref, projectName string, before, limit int) (apitypes.TemplateVersionList, error) {
	q := url.Values{}
	if projectName != "" {
		q.Set("project", projectName)
	}
	if before > 0 {
		q.Set("before", strconv.Itoa(before))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out apitypes.TemplateVersionList
	return out, c.Do(ctx, http.MethodGet, path("/v1/templates/", ref, "/versions"), q, nil, &out)
}

// GetTemplateVersion gets one version of a template.
func (c *Client) GetTemplateVersion(ctx context.Context, ref, projectName string, version int) (apitypes.TemplateVersion, error) {
	var it apitypes.TemplateVersionItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/templates/", ref, "/versions/", strconv.Itoa(version)), project(projectName), nil, &it)
}

// DiffTemplate compares two versions of a template field by field.
func (c *Client) DiffTemplate(ctx context.Context, ref, projectName string, from, to int) (apitypes.TemplateDiff, error) {
	q := url.Values{"from": {strconv.Itoa(from)}, "to": {strconv.Itoa(to)}}
	if projectName != "" {
		q.Set("project", projectName)
	}
	var out apitypes.TemplateDiff
	return out, c.Do(ctx, http.MethodGet, path("/v1/templates/", ref, "/diff"), q, nil, &out)
}

// InstantiateTemplate creates req.Count VMs (default 1) from a template,
// all or none. With wait it answers once every VM runs.
func (c *Client) InstantiateTemplate(ctx context.Context, ref, projectName string, req apitypes.InstantiateRequest, wait bool) (apitypes.InstantiateResponse, error) {
	q := url.Values{"wait": {strconv.FormatBool(wait)}}
	if projectName != "" {
		q.Set("project", projectName)
	}
	var out apitypes.InstantiateResponse
	return out, c.Do(ctx, http.MethodPost, path("/v1/templates/", ref, "/instantiate"), q, req, &out)
}

// CreateSnapshot snapshots a running or paused VM; resume nil resumes a
// running VM afterwards (the default).
func (c *Client) CreateSnapshot(ctx context.Context, vmRef string, resume *bool) (apitypes.SnapshotCreated, error) {
	var out apitypes.SnapshotCreated
	return out, c.Do(ctx, http.MethodPost, path("/v1/vms/", vmRef, "/snapshots"), nil, apitypes.CreateSnapshotRequest{Resume: resume}, &out)
}

// ListSnapshotsOptions filters GET /v1/snapshots.
type ListSnapshotsOptions struct {
	VMID, HostID, Project string
}

// ListSnapshots lists snapshots.
func (c *Client) ListSnapshots(ctx context.Context, o ListSnapshotsOptions) (apitypes.SnapshotList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"vm_id": o.VMID, "host_id": o.HostID, "project": o.Project} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var l apitypes.SnapshotList
	return l, c.Do(ctx, http.MethodGet, "/v1/snapshots", q, nil, &l)
}

// VMSnapshots lists a VM's snapshots (also after the VM was deleted, by
// its id).
func (c *Client) VMSnapshots(ctx context.Context, vmRef string) (apitypes.SnapshotList, error) {
	var l apitypes.SnapshotList
	return l, c.Do(ctx, http.MethodGet, path("/v1/vms/", vmRef, "/snapshots"), nil, nil, &l)
}

// GetSnapshot returns a snapshot.
func (c *Client) GetSnapshot(ctx context.Context, id string) (apitypes.Snapshot, error) {
	var it apitypes.SnapshotItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/snapshots/", id), nil, nil, &it)
}

// DeleteSnapshot deletes a snapshot and its files.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/snapshots/", id), nil, nil, nil)
}

// InstantiateSnapshot restores a snapshot as a new VM on its host.
func (c *Client) InstantiateSnapshot(ctx context.Context, id string, req apitypes.InstantiateSnapshotRequest) (apitypes.RestoredVM, error) {
	var out apitypes.RestoredVM
	return out, c.Do(ctx, http.MethodPost, path("/v1/snapshots/", id, "/instantiate"), nil, req, &out)
}
