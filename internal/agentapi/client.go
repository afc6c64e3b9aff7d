package agentapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
)

// Client calls one agent. It is safe for concurrent use.
type Client struct {
	base string
	c    *jsonhttp.Caller
}

// NewClient returns a client for the agent at base (e.g.
// "http://10.0.0.5:9090") authenticating with token. hc may be nil.
func NewClient(base, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: jsonhttp.NewTransport()}
	}
	base = strings.TrimSuffix(base, "/")
	cl := &Client{base: base}
	cl.c = &jsonhttp.Caller{Base: base + Prefix, Token: token, HC: hc, Timeout: 30 * time.Second,
		Unreachable: func(err error) error { return &UnreachableError{Agent: base, Err: err} }}
	return cl
}

// Base returns the agent's base URL.
func (c *Client) Base() string { return c.base }

// CloseIdle drops the client's idle connections.
func (c *Client) CloseIdle() { c.c.CloseIdle() }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	p, q, _ := strings.Cut(path, "?")
	var qv url.Values
	if q != "" {
		qv, _ = url.ParseQuery(q)
	}
	return c.c.Do(ctx, method, p, qv, in, out)
}

func (c *Client) authorize(req *http.Request) { c.c.Authorize(req) }

// UnreachableError means the agent could not be reached at all.
type UnreachableError struct {
	Agent string
	Err   error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agent %s unreachable: %v", e.Agent, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

func vmPath(id, rest string) string { return "/vms/" + url.PathEscape(id) + rest }

// Tap ensures the bridge and the VM's TAP (idempotent).
func (c *Client) Tap(ctx context.Context, vmID string, req TapRequest) (TapResponse, error) {
	var r TapResponse
	return r, c.do(ctx, http.MethodPost, vmPath(vmID, "/tap"), req, &r)
}

// Spawn starts the VM's VMM process and waits for its socket (idempotent).
func (c *Client) Spawn(ctx context.Context, vmID string, req SpawnRequest) (SpawnResponse, error) {
	var r SpawnResponse
	return r, c.do(ctx, http.MethodPost, vmPath(vmID, "/spawn"), req, &r)
}

// Stop ends the VM's process, deletes its TAP and socket (idempotent).
func (c *Client) Stop(ctx context.Context, vmID string, req StopRequest) error {
	return c.do(ctx, http.MethodPost, vmPath(vmID, "/stop"), req, nil)
}

// Delete stops the VM and removes its run dir (idempotent).
func (c *Client) Delete(ctx context.Context, vmID string) error {
	return c.do(ctx, http.MethodDelete, vmPath(vmID, ""), nil, nil)
}

// Inventory lists what the agent finds on its host.
func (c *Client) Inventory(ctx context.Context) (Inventory, error) {
	var r Inventory
	return r, c.do(ctx, http.MethodGet, "/inventory", nil, &r)
}

// Capacity reports the host's capacity and allocation.
func (c *Client) Capacity(ctx context.Context) (Capacity, error) {
	var r Capacity
	return r, c.do(ctx, http.MethodGet, "/capacity", nil, &r)
}

// Health reports the agent's health.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var r Health
	return r, c.do(ctx, http.MethodGet, "/health", nil, &r)
}

// Firecracker returns a typed Firecracker client that relays through the
// agent's proxy to the VM's API socket.
func (c *Client) Firecracker(vmID string, opts ...firecracker.Option) *firecracker.Client {
	base := c.base + Prefix + vmPath(vmID, "/proxy")
	pre := []firecracker.Option{firecracker.WithRequestHook(c.authorize)}
	opts = append(pre, opts...)
	return firecracker.NewHTTP(base, c.c.HC, opts...)
}

// Logs returns the last tail lines of the VM's firecracker log (source
// "fc") or guest console (source "console").
func (c *Client) Logs(ctx context.Context, vmID, source string, tail int) (LogLines, error) {
	var r LogLines
	q := url.Values{"source": {source}, "tail": {fmt.Sprint(tail)}}
	return r, c.do(ctx, http.MethodGet, vmPath(vmID, "/logs?"+q.Encode()), nil, &r)
}

// TailFile returns the last lines of a file under the agent's VM run dirs
// (agents in dev mode only).
func (c *Client) TailFile(ctx context.Context, path string, tail int) (LogLines, error) {
	var r LogLines
	q := url.Values{"path": {path}, "tail": {fmt.Sprint(tail)}}
	return r, c.do(ctx, http.MethodGet, "/files/tail?"+q.Encode(), nil, &r)
}

// Metrics returns the latest metrics record of the VM.
func (c *Client) Metrics(ctx context.Context, vmID string) (MetricsRecord, error) {
	var r MetricsRecord
	return r, c.do(ctx, http.MethodGet, vmPath(vmID, "/metrics"), nil, &r)
}

// StreamLogs opens the VM's log as a Server-Sent Events stream; the caller
// reads and closes the body.
func (c *Client) StreamLogs(ctx context.Context, vmID, source string) (*http.Response, error) {
	return c.StreamLogsFrom(ctx, vmID, StreamOptions{Source: source})
}

// DeleteTap removes a TAP by name (an orphan whose VM is unknown).
func (c *Client) DeleteTap(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/taps/"+url.PathEscape(name), nil, nil)
}

// ProxyBatch runs firecracker calls for the VM in one request, in order,
// stopping at the first refusal.
func (c *Client) ProxyBatch(ctx context.Context, vmID string, calls []firecracker.Call) (BatchResponse, error) {
	var r BatchResponse
	return r, c.do(ctx, http.MethodPost, vmPath(vmID, "/proxy-batch"), BatchRequest{Calls: calls}, &r)
}
