package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// Client calls one agent. It is safe for concurrent use.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client for the agent at base (e.g.
// "http://10.0.0.5:9090") authenticating with token. hc may be nil.
func NewClient(base, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	return &Client{base: strings.TrimSuffix(base, "/"), token: token, hc: hc}
}

// Base returns the agent's base URL.
func (c *Client) Base() string { return c.base }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if _, has := ctx.Deadline(); !has {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("agent %s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+Prefix+path, body)
	if err != nil {
		return fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	c.authorize(req)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &UnreachableError{Agent: c.base, Err: err}
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return &UnreachableError{Agent: c.base, Err: err}
	}
	if resp.StatusCode >= 300 {
		return decodeError(resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("agent %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

func (c *Client) authorize(req *http.Request) {
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if id := httpmw.RequestID(req.Context()); id != "" {
		req.Header.Set(httpmw.HeaderRequestID, id)
	}
}

// UnreachableError means the agent could not be reached at all.
type UnreachableError struct {
	Agent string
	Err   error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agent %s unreachable: %v", e.Agent, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

func decodeError(status int, raw []byte) error {
	var e apierr.Error
	if json.Unmarshal(raw, &e) != nil || e.Code == "" {
		e = apierr.Error{Code: "agent_error", Message: strings.TrimSpace(string(raw))}
	}
	e.Status = status
	return &e
}

func vmPath(id, rest string) string { return "/vms/" + url.PathEscape(id) + rest }

// Tap ensures the bridge and the VM's TAP (idempotent).
func (c *Client) Tap(ctx context.Context, vmID string) (TapResponse, error) {
	var r TapResponse
	return r, c.do(ctx, http.MethodPost, vmPath(vmID, "/tap"), struct{}{}, &r)
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
	return firecracker.NewHTTP(base, c.hc, opts...)
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

// openStream GETs an event stream, resuming after lastEventID when set.
func (c *Client) openStream(ctx context.Context, path, lastEventID string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+Prefix+path, nil)
	if err != nil {
		return nil, err
	}
	c.authorize(req)
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, &UnreachableError{Agent: c.base, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, decodeError(resp.StatusCode, raw)
	}
	return resp, nil
}

// DeleteTap removes a TAP by name (an orphan whose VM is unknown).
func (c *Client) DeleteTap(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/taps/"+url.PathEscape(name), nil, nil)
}
