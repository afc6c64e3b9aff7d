package agentapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Sample is one value of a VM's metrics, named as the agent's /metrics
// names it (without labels: the VM is the request's).
type Sample struct {
	Name  string  `json:"name"`
	Type  string  `json:"type" enum:"counter,gauge"`
	Value float64 `json:"value"`
}

// VMStats is the answer of GET /agent/v1/vms/{id}/stats: the same values
// the agent's /metrics exports for the VM, counters already monotonic.
type VMStats struct {
	At      time.Time `json:"at"`
	Samples []Sample  `json:"samples"`
}

// Stats returns the VM's current metric values.
func (c *Client) Stats(ctx context.Context, vmID string) (VMStats, error) {
	var r VMStats
	return r, c.do(ctx, http.MethodGet, vmPath(vmID, "/stats"), nil, &r)
}

// StreamOptions choose where a log stream starts.
type StreamOptions struct {
	Source string // fc (default) or console
	// Tail starts with the last Tail lines (0: only new lines).
	Tail int
	// LastEventID resumes after the event of that id (an SSE id the
	// stream sent); it wins over Tail.
	LastEventID string
}

// StreamLogsFrom opens the VM's log as a Server-Sent Events stream from
// where o says; the caller reads and closes the body.
func (c *Client) StreamLogsFrom(ctx context.Context, vmID string, o StreamOptions) (*http.Response, error) {
	q := url.Values{"source": {o.Source}}
	if o.Tail > 0 {
		q.Set("tail", strconv.Itoa(o.Tail))
	}
	var h http.Header
	if o.LastEventID != "" {
		h = http.Header{"Last-Event-ID": {o.LastEventID}}
	}
	return c.c.StreamHeader(ctx, vmPath(vmID, "/logs/stream"), q, h)
}
