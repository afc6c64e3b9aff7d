package nexus

import (
	"context"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Hosts lists the fleet's hosts with capacity and allocation.
func (c *Client) Hosts(ctx context.Context) (apitypes.HostList, error) {
	var l apitypes.HostList
	return l, c.Do(ctx, http.MethodGet, "/v1/hosts", nil, nil, &l)
}

// DrainHost stops placing new VMs on a host (id or name); its VMs keep
// running.
func (c *Client) DrainHost(ctx context.Context, ref string) error {
	return c.Do(ctx, http.MethodPost, path("/v1/hosts/", ref, "/drain"), nil, nil, nil)
}

// UndrainHost places new VMs on a host again.
func (c *Client) UndrainHost(ctx context.Context, ref string) error {
	return c.Do(ctx, http.MethodPost, path("/v1/hosts/", ref, "/undrain"), nil, nil, nil)
}

// RemoveHost forgets a host that holds no VMs (409 while it does).
func (c *Client) RemoveHost(ctx context.Context, ref string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/hosts/", ref), nil, nil, nil)
}

// Reconciler says whether this manager reconciles, and its last pass.
func (c *Client) Reconciler(ctx context.Context) (apitypes.ReconcilerStatus, error) {
	var s apitypes.ReconcilerStatus
	return s, c.Do(ctx, http.MethodGet, "/v1/reconciler", nil, nil, &s)
}

// Whoami describes the client's token: owner, role and project.
func (c *Client) Whoami(ctx context.Context) (apitypes.Whoami, error) {
	var w apitypes.Whoami
	return w, c.Do(ctx, http.MethodGet, "/v1/whoami", nil, nil, &w)
}

// Health is the manager's liveness (GET /healthz).
func (c *Client) Health(ctx context.Context) (apitypes.Health, error) {
	var h apitypes.Health
	return h, c.Do(ctx, http.MethodGet, "/healthz", nil, nil, &h)
}

// Ready is the manager's readiness (GET /readyz): a 503 *APIError while
// the store is unreachable or no host is ready.
func (c *Client) Ready(ctx context.Context) (apitypes.Health, error) {
	var h apitypes.Health
	return h, c.Do(ctx, http.MethodGet, "/readyz", nil, nil, &h)
}

// PrometheusTargets lists the agents' metrics endpoints in Prometheus's
// HTTP service discovery format.
func (c *Client) PrometheusTargets(ctx context.Context) ([]apitypes.SDTargetGroup, error) {
	var g []apitypes.SDTargetGroup
	return g, c.Do(ctx, http.MethodGet, "/v1/discovery/prometheus", nil, nil, &g)
}

// CreateToken creates an API token (admins); the secret is in the answer
// only.
func (c *Client) CreateToken(ctx context.Context, req apitypes.CreateTokenRequest) (apitypes.TokenSecret, error) {
	var s apitypes.TokenSecret
	return s, c.Do(ctx, http.MethodPost, "/v1/tokens", nil, req, &s)
}

// ListTokens lists tokens, never their secrets; all includes revoked ones.
func (c *Client) ListTokens(ctx context.Context, all bool) (apitypes.TokenList, error) {
	var l apitypes.TokenList
	var q url.Values
	if all {
		q = url.Values{"all": {"true"}}
	}
	return l, c.Do(ctx, http.MethodGet, "/v1/tokens", q, nil, &l)
}

// RevokeToken revokes a token, effective at once.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/tokens/", id), nil, nil, nil)
}

// RotateToken gives a token a new secret; the old one stops working.
func (c *Client) RotateToken(ctx context.Context, id string) (apitypes.TokenSecret, error) {
	var s apitypes.TokenSecret
	return s, c.Do(ctx, http.MethodPost, path("/v1/tokens/", id, "/rotate"), nil, nil, &s)
}

// AuditOptions filter the audit trail.
type AuditOptions struct {
	VMID, ResourceID, Actor string
	Since                   time.Time
	// AfterID pages: the last id of the previous page.
	AfterID int64
	// Limit is the page size (default 1000).
	Limit int
}

// Audit returns one page of the audit trail, oldest first.
func (c *Client) Audit(ctx context.Context, o AuditOptions) (apitypes.AuditList, error) {
	q := url.Values{}
	for k, v := range map[string]string{"vm_id": o.VMID, "resource_id": o.ResourceID, "actor": o.Actor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !o.Since.IsZero() {
		q.Set("since", o.Since.Format(time.RFC3339Nano))
	}
	if o.AfterID > 0 {
		q.Set("after_id", strconv.FormatInt(o.AfterID, 10))
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	var l apitypes.AuditList
	return l, c.Do(ctx, http.MethodGet, "/v1/audit", q, nil, &l)
}

// AuditEntries iterates over the whole audit trail that matches o, page by
// page; it stops at the first error, which it yields.
func (c *Client) AuditEntries(ctx context.Context, o AuditOptions) iter.Seq2[apitypes.AuditEntry, error] {
	return func(yield func(apitypes.AuditEntry, error) bool) {
		for {
			l, err := c.Audit(ctx, o)
			if err != nil {
				yield(apitypes.AuditEntry{}, err)
				return
			}
			for _, e := range l.Items {
				if !yield(e, nil) {
					return
				}
			}
			if len(l.Items) == 0 {
				return
			}
			o.AfterID = l.Items[len(l.Items)-1].ID
		}
	}
}

// Quota returns a project's quota (admins, or tokens of that project).
func (c *Client) Quota(ctx context.Context, project string) (apitypes.Quota, error) {
	var q apitypes.QuotaItem
	return q.Item, c.Do(ctx, http.MethodGet, "/v1/projects/"+url.PathEscape(project)+"/quota", nil, nil, &q)
}

// SetQuota replaces a project's quota (admins): every limit left nil is
// no limit.
func (c *Client) SetQuota(ctx context.Context, project string, limits apitypes.QuotaLimits) (apitypes.Quota, error) {
	var q apitypes.QuotaItem
	return q.Item, c.Do(ctx, http.MethodPut, "/v1/projects/"+url.PathEscape(project)+"/quota", nil, limits, &q)
}

// ProjectUsage returns what a project holds, with its limits.
func (c *Client) ProjectUsage(ctx context.Context, project string) (apitypes.ProjectUsage, error) {
	var u apitypes.ProjectUsageItem
	return u.Item, c.Do(ctx, http.MethodGet, "/v1/projects/"+url.PathEscape(project)+"/usage", nil, nil, &u)
}
