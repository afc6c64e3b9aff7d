package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// QuotaService keeps project quotas (store.Store).
type QuotaService interface {
	GetQuota(ctx context.Context, project string) (store.Quota, error)
	PutQuota(ctx context.Context, q store.Quota) (store.Quota, error)
	ProjectUsage(ctx context.Context, project string) (store.Usage, error)
}

func (s *Server) quotaRoutes() {
	register(s, "get-quota", http.MethodGet, "/v1/projects/{id}/quota", "A project's quota (no limit where a field is absent)", viewer, s.getQuota)
	register(s, "put-quota", http.MethodPut, "/v1/projects/{id}/quota", "Set a project's own quota (replaces every limit and the default; absent: no limit)", admin("quota.set", "project"), s.putQuota)
	register(s, "project-usage", http.MethodGet, "/v1/projects/{id}/usage", "What a project holds, against its quota", viewer, s.projectUsage)
}

type projectPath struct {
	ID string `path:"id" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"project name"`
}

type putQuotaInput struct {
	ID   string `path:"id" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"project name"`
	Body apitypes.QuotaLimits
}

type quotaOutput struct {
	Body apitypes.QuotaItem
}

type usageOutput struct {
	Body apitypes.ProjectUsageItem
}

// canSeeProject: tokens of every project see every project; others (a
// project's admins too) only their own (another answers 404, as other
// projects' VMs do).
func canSeeProject(ctx context.Context, project string) error {
	p, _ := principal(ctx)
	if p.Project == auth.AllProjects || p.Project == project {
		return nil
	}
	return apierr.Newf(http.StatusNotFound, "not_found", "project %q not found", project)
}

func limitsOut(l store.QuotaLimits) apitypes.QuotaLimits {
	return apitypes.QuotaLimits{VMs: l.VMs, VCPUs: l.VCPUs, MemMiB: l.MemMiB, Snapshots: l.Snapshots,
		SnapshotBytes: l.SnapshotBytes, Images: l.Images, Templates: l.Templates, Streams: l.Streams}
}

func quotaView(q store.Quota) apitypes.Quota {
	out := apitypes.Quota{Project: q.Project, Limits: limitsOut(q.Limits), Default: q.Default}
	if !q.UpdatedAt.IsZero() && !q.Default {
		out.UpdatedAt = &q.UpdatedAt
	}
	return out
}

func (s *Server) getQuota(ctx context.Context, in *projectPath) (*quotaOutput, error) {
	if err := canSeeProject(ctx, in.ID); err != nil {
		return nil, err
	}
	q, err := s.quotas.GetQuota(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	return &quotaOutput{Body: apitypes.QuotaItem{Item: quotaView(q)}}, nil
}

func (s *Server) putQuota(ctx context.Context, in *putQuotaInput) (*quotaOutput, error) {
	b := in.Body
	q, err := s.quotas.PutQuota(ctx, store.Quota{Project: in.ID, Limits: store.QuotaLimits{VMs: b.VMs, VCPUs: b.VCPUs, MemMiB: b.MemMiB,
		Snapshots: b.Snapshots, SnapshotBytes: b.SnapshotBytes, Images: b.Images, Templates: b.Templates, Streams: b.Streams}})
	if err != nil {
		return nil, err
	}
	return &quotaOutput{Body: apitypes.QuotaItem{Item: quotaView(q)}}, nil
}

func (s *Server) projectUsage(ctx context.Context, in *projectPath) (*usageOutput, error) {
	if err := canSeeProject(ctx, in.ID); err != nil {
		return nil, err
	}
	q, err := s.quotas.GetQuota(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	u, err := s.quotas.ProjectUsage(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	return &usageOutput{Body: apitypes.ProjectUsageItem{Item: apitypes.ProjectUsage{
		Project: in.ID, Limits: limitsOut(q.Limits), Default: q.Default,
		Usage: apitypes.UsageCounts{VMs: u.VMs, VCPUs: u.VCPUs, MemMiB: u.MemMiB, Snapshots: u.Snapshots,
			SnapshotBytes: u.SnapshotBytes, Images: u.Images, Templates: u.Templates, Streams: int64(s.streams.ofProject(in.ID))},
	}}}, nil
}

// quotaError is a store's refusal of a create past a project's quota, as
// the contract says it: 403 quota_exceeded with the limit and the usage.
func quotaError(err error) (*apierr.Error, bool) {
	var qe *store.QuotaError
	if !errors.As(err, &qe) {
		return nil, false
	}
	return apierr.Newf(http.StatusForbidden, "quota_exceeded", "project %s: %s would be %d, over its quota of %d (%d in use)",
		qe.Project, qe.Resource, qe.Used+qe.Want, qe.Limit, qe.Used).
		WithSuggestion(fmt.Sprintf("delete what the project no longer needs (GET /v1/projects/%s/usage shows it), or ask an admin to raise its %s quota", qe.Project, qe.Resource)), true
}
