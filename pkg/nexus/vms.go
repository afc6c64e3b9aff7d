package nexus

import (
	"context"
	"iter"
	"net/http"
	"net/url"
	"strconv"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// CreateVM creates a VM. With wait it answers once the VM runs (or failed,
// with firecracker's words in the error); without, at once, with the VM in
// state requested.
func (c *Client) CreateVM(ctx context.Context, req apitypes.CreateVMRequest, wait bool) (apitypes.VM, error) {
	var out apitypes.VMCreated
	err := c.Do(ctx, http.MethodPost, "/v1/vms", url.Values{"wait": {strconv.FormatBool(wait)}}, req, &out)
	return out.Item, err
}

// ListVMsOptions filters GET /v1/vms; zero values do not filter.
type ListVMsOptions struct {
	Project string
	// Name finds one VM by its exact name (in Project, default: the
	// token's project or "default").
	Name   string
	State  string
	HostID string
	// Tags requires each key=value.
	Tags map[string]string
	// Limit is the page size (default 100, at most 1000).
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

func (o ListVMsOptions) query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"project": o.Project, "name": o.Name, "state": o.State, "host_id": o.HostID, "cursor": o.Cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	for k, v := range o.Tags {
		q.Add("tag", k+"="+v)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	return q
}

// ListVMs returns one page of VMs; NextCursor is set when there are more.
func (c *Client) ListVMs(ctx context.Context, o ListVMsOptions) (apitypes.VMList, error) {
	var l apitypes.VMList
	return l, c.Do(ctx, http.MethodGet, "/v1/vms", o.query(), nil, &l)
}

// VMs iterates over every VM that matches o, fetching pages as it goes;
// it stops at the first error, which it yields.
func (c *Client) VMs(ctx context.Context, o ListVMsOptions) iter.Seq2[apitypes.VM, error] {
	return func(yield func(apitypes.VM, error) bool) {
		for {
			l, err := c.ListVMs(ctx, o)
			if err != nil {
				yield(apitypes.VM{}, err)
				return
			}
			for _, vm := range l.Items {
				if !yield(vm, nil) {
					return
				}
			}
			if l.NextCursor == "" {
				return
			}
			o.Cursor = l.NextCursor
		}
	}
}

// GetVM returns one VM by id or by name (in the token's project).
func (c *Client) GetVM(ctx context.Context, ref string) (apitypes.VM, error) {
	var it apitypes.VMItem
	return it.Item, c.Do(ctx, http.MethodGet, path("/v1/vms/", ref), nil, nil, &it)
}

// VMAction is "start", "stop", "pause" or "resume" on a VM (id or name).
func (c *Client) VMAction(ctx context.Context, ref, action string) error {
	return c.Do(ctx, http.MethodPost, path("/v1/vms/", ref, "/"+action), nil, nil, nil)
}

// StartVM starts a stopped VM.
func (c *Client) StartVM(ctx context.Context, ref string) error { return c.VMAction(ctx, ref, "start") }

// StopVM stops a VM (it passes through stopping to stopped).
func (c *Client) StopVM(ctx context.Context, ref string) error { return c.VMAction(ctx, ref, "stop") }

// PauseVM pauses a running VM.
func (c *Client) PauseVM(ctx context.Context, ref string) error { return c.VMAction(ctx, ref, "pause") }

// ResumeVM resumes a paused VM.
func (c *Client) ResumeVM(ctx context.Context, ref string) error {
	return c.VMAction(ctx, ref, "resume")
}

// DeleteVM deletes a VM and everything it has on its host.
func (c *Client) DeleteVM(ctx context.Context, ref string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/vms/", ref), nil, nil, nil)
}

// ForceDeleteVM deletes a VM's record even when its host is unreachable
// (its leftovers are removed as orphans if the host returns).
func (c *Client) ForceDeleteVM(ctx context.Context, ref string) error {
	return c.Do(ctx, http.MethodDelete, path("/v1/vms/", ref), url.Values{"force": {"true"}}, nil, nil)
}

// ExtendTTL makes a VM expire ttl (a Go duration, "2h") from now; a
// non-empty onExpiry ("stop" or "delete") also changes what happens then.
func (c *Client) ExtendTTL(ctx context.Context, ref, ttl, onExpiry string) (apitypes.VM, error) {
	var it apitypes.VMItem
	err := c.Do(ctx, http.MethodPost, path("/v1/vms/", ref, "/ttl"), nil, apitypes.ExtendTTLRequest{TTL: ttl, OnExpiry: onExpiry}, &it)
	return it.Item, err
}

// Bulk runs "start", "stop" or "delete" on many VMs (ids) and reports each
// outcome.
func (c *Client) Bulk(ctx context.Context, action string, ids []string) (apitypes.BulkResponse, error) {
	var r apitypes.BulkResponse
	return r, c.Do(ctx, http.MethodPost, "/v1/vms/bulk", nil, apitypes.BulkRequest{Action: action, IDs: ids}, &r)
}

// PatchDrive changes a running VM's drive rate limiter.
func (c *Client) PatchDrive(ctx context.Context, ref, driveID string, rl apitypes.RateLimiter) error {
	return c.Do(ctx, http.MethodPatch, path("/v1/vms/", ref, "/drives/", driveID), nil, apitypes.DrivePatch{RateLimiter: &rl}, nil)
}

// Events returns a VM's latest events (at most 1000), oldest first.
func (c *Client) Events(ctx context.Context, ref string) (apitypes.EventList, error) {
	return c.EventsAfter(ctx, ref, 0, 0)
}

// EventsAfter returns the VM's events after the one with id afterID,
// oldest first, at most limit (0: the server's default); afterID 0 means
// the latest ones. Polling with the last id read follows a VM's history.
func (c *Client) EventsAfter(ctx context.Context, ref string, afterID int64, limit int) (apitypes.EventList, error) {
	var l apitypes.EventList
	q := url.Values{}
	if afterID > 0 {
		q.Set("after_id", strconv.FormatInt(afterID, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return l, c.Do(ctx, http.MethodGet, path("/v1/vms/", ref, "/events"), q, nil, &l)
}

// VMStats returns a VM's current metric values.
func (c *Client) VMStats(ctx context.Context, ref string) (apitypes.VMStats, error) {
	var s apitypes.VMStats
	return s, c.Do(ctx, http.MethodGet, path("/v1/vms/", ref, "/stats"), nil, nil, &s)
}

// MetricsRecent returns a VM's latest firecracker metrics record.
func (c *Client) MetricsRecent(ctx context.Context, id string) (apitypes.MetricsRecent, error) {
	var m apitypes.MetricsRecent
	return m, c.Do(ctx, http.MethodGet, "/v1/metrics/recent", url.Values{"id": {id}}, nil, &m)
}
