// Package nexus is the Go SDK for the manager's REST API, used by the
// nexus CLI and by end-to-end tests. Errors from the API come back as
// *apierr.Error with the contract's fields.
package nexus

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Client calls one manager.
type Client struct {
	c *jsonhttp.Caller
}

// Option tunes a Client.
type Option func(*options)

type options struct {
	rt http.RoundTripper
}

// WithTransport makes the client use rt: for an https manager whose
// certificate a private CA signed, a transport whose TLS configuration
// trusts that CA (the CLI's --ca).
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) { o.rt = rt }
}

// New returns a client for the manager at base with an API token.
func New(base, token string, opts ...Option) *Client {
	var o options
	for _, f := range opts {
		f(&o)
	}
	c := jsonhttp.New(base, token)
	if o.rt != nil {
		c.HC = &http.Client{Transport: o.rt}
	}
	c.Unreachable = func(err error) error {
		return fmt.Errorf("cannot reach the manager at %s: %w (is it running? set NEXUS_ADDR)", c.Base, err)
	}
	return &Client{c: c}
}

// Do sends one request; in is JSON-encoded when non-nil, out decoded.
func (c *Client) Do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	return c.c.Do(ctx, method, path, q, in, out)
}

// CreateVM creates a VM; with wait it answers once the VM runs.
func (c *Client) CreateVM(ctx context.Context, req apitypes.CreateVMRequest, wait bool) (apitypes.VM, error) {
	var vm apitypes.VM
	return vm, c.Do(ctx, http.MethodPost, "/v1/vms", url.Values{"wait": {fmt.Sprint(wait)}}, req, &vm)
}

// ListVMs lists VMs with the API's filters (project, state, host_id, tag, name, limit, cursor).
func (c *Client) ListVMs(ctx context.Context, q url.Values) (apitypes.VMList, error) {
	var l apitypes.VMList
	return l, c.Do(ctx, http.MethodGet, "/v1/vms", q, nil, &l)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, id string) (apitypes.VM, error) {
	var it apitypes.VMItem
	return it.Item, c.Do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id), nil, nil, &it)
}

// VMAction is start, stop, pause or resume.
func (c *Client) VMAction(ctx context.Context, id, action string) error {
	return c.Do(ctx, http.MethodPost, "/v1/vms/"+url.PathEscape(id)+"/"+action, nil, nil, nil)
}

// DeleteVM deletes a VM.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/v1/vms/"+url.PathEscape(id), nil, nil, nil)
}

// Bulk runs a bulk action.
func (c *Client) Bulk(ctx context.Context, action string, ids []string) (apitypes.BulkResponse, error) {
	var r apitypes.BulkResponse
	return r, c.Do(ctx, http.MethodPost, "/v1/vms/bulk", nil, apitypes.BulkRequest{Action: action, IDs: ids}, &r)
}

// Events returns a VM's history.
func (c *Client) Events(ctx context.Context, id string) (apitypes.EventList, error) {
	var l apitypes.EventList
	return l, c.Do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id)+"/events", nil, nil, &l)
}

// Logs returns the last lines of a VM's log.
func (c *Client) Logs(ctx context.Context, id, source string, tail int) (apitypes.LogLines, error) {
	var l apitypes.LogLines
	q := url.Values{"source": {source}, "tail": {fmt.Sprint(tail)}}
	return l, c.Do(ctx, http.MethodGet, "/v1/vms/"+url.PathEscape(id)+"/logs", q, nil, &l)
}

// FollowLogs streams a VM's log lines to fn until ctx ends or the stream
// closes.
func (c *Client) FollowLogs(ctx context.Context, id, source string, fn func(line string)) error {
	resp, err := c.c.Stream(ctx, "/v1/vms/"+url.PathEscape(id)+"/logs/stream", url.Values{"source": {source}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			fn(data)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}

// Hosts lists the fleet.
func (c *Client) Hosts(ctx context.Context) (apitypes.HostList, error) {
	var l apitypes.HostList
	return l, c.Do(ctx, http.MethodGet, "/v1/hosts", nil, nil, &l)
}

// CloseIdle drops the client's idle connections.
func (c *Client) CloseIdle() { c.c.CloseIdle() }
