// Package nexus is the Go SDK of the Nexus API: a typed method for each
// route a user calls (VMs, images, templates, snapshots, hosts, tokens,
// audit), iterators over paged lists, log streams that resume where they
// broke off, and errors as *APIError with the contract's code, status,
// suggestion and request id. The request and answer bodies are the types
// of package apitypes.
//
//	c := nexus.New("http://127.0.0.1:8080", os.Getenv("NEXUS_TOKEN"))
//	vm, err := c.CreateVM(ctx, apitypes.CreateVMRequest{Name: "web", …}, true)
//	var ae *nexus.APIError
//	if errors.As(err, &ae) && ae.Code == "name_taken" { … }
//
// Every method takes a context. Calls that are safe to repeat (GET, PUT,
// DELETE, and any call whose connection was refused before it was sent)
// are retried with backoff when the manager is unreachable or answers 429,
// 502, 503 or 504, honouring Retry-After; see WithRetry.
package nexus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
)

// APIError is an error answer of the API: Code is the stable short code
// to branch on (not_found, name_taken, no_capacity …), Status the HTTP
// status, Message and Suggestion words for people, RequestID the id to
// quote, FaultMessage and LogTail firecracker's words when it took part,
// RetryAfter the answer's Retry-After.
type APIError = apierr.Error

// Client calls one manager. It is safe for concurrent use.
type Client struct {
	c     *jsonhttp.Caller
	retry RetryPolicy
}

// RetryPolicy says how calls are retried: at most Attempts tries in all
// (1: no retry), waiting Base, 2×Base, 4×Base … (with jitter, at most
// Max) between them, or what the answer's Retry-After asks, up to Max.
type RetryPolicy struct {
	Attempts  int
	Base, Max time.Duration
}

// DefaultRetry is the policy of a new client.
var DefaultRetry = RetryPolicy{Attempts: 4, Base: 100 * time.Millisecond, Max: 5 * time.Second}

// Option configures a client.
type Option func(*Client)

// WithHTTPClient sends requests with hc (its transport, TLS settings and
// timeouts) instead of a client of the SDK's own.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.c.HC = hc } }

// WithRetry replaces DefaultRetry; RetryPolicy{Attempts: 1} turns retries
// off.
func WithRetry(p RetryPolicy) Option { return func(c *Client) { c.retry = p } }

// WithTimeout bounds each call whose context has no deadline (default:
// none; streams are never bounded by it).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.c.Timeout = d } }

// New returns a client of the manager at addr (e.g. "http://10.0.0.2:8080")
// that authenticates with an API token.
func New(addr, token string, opts ...Option) *Client {
	jc := jsonhttp.New(addr, token)
	jc.Unreachable = func(err error) error {
		return fmt.Errorf("cannot reach the manager at %s: %w (is it running? set NEXUS_ADDR)", jc.Base, err)
	}
	c := &Client{c: jc, retry: DefaultRetry}
	for _, o := range opts {
		o(c)
	}
	if c.retry.Attempts < 1 {
		c.retry.Attempts = 1
	}
	return c
}

// Addr is the manager's base URL.
func (c *Client) Addr() string { return c.c.Base }

// Do sends one request to a path of the API (for routes without a method
// here): in is sent as JSON when not nil, a 2xx answer decoded into out
// when not nil; an error answer is an *APIError. It retries as the
// package documentation says.
func (c *Client) Do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	idempotent := method == http.MethodGet || method == http.MethodHead || method == http.MethodPut || method == http.MethodDelete
	var err error
	for attempt := 1; ; attempt++ {
		err = c.c.Do(ctx, method, path, q, in, out)
		if err == nil {
			return nil
		}
		// A DELETE whose earlier try reached the server but whose answer
		// was lost: the resource is gone, as asked.
		if attempt > 1 && method == http.MethodDelete && IsNotFound(err) {
			return nil
		}
		wait, retriable := c.retriable(err, idempotent)
		if !retriable || attempt >= c.retry.Attempts || ctx.Err() != nil {
			return err
		}
		if wait == 0 {
			wait = backoff(c.retry, attempt)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// retriable says whether err may be retried and how long the server asked
// to wait (0: the policy's backoff).
func (c *Client) retriable(err error, idempotent bool) (time.Duration, bool) {
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			// Both mean "not now": nothing was done, even for a POST.
			return min(ae.RetryAfter, c.retry.Max), true
		case http.StatusBadGateway, http.StatusGatewayTimeout:
			return min(ae.RetryAfter, c.retry.Max), idempotent
		}
		return 0, false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return 0, false
	}
	// Connection refused: the request never left, so even a POST is safe
	// to send again. Anything else may have reached the server.
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return 0, true
	}
	return 0, idempotent
}

func backoff(p RetryPolicy, attempt int) time.Duration {
	d := p.Base << (attempt - 1)
	if d <= 0 || d > p.Max {
		d = p.Max
	}
	// Full jitter: many clients retrying together do not arrive together.
	return d/2 + rand.N(d/2+1)
}

// CloseIdle drops the client's idle connections.
func (c *Client) CloseIdle() { c.c.CloseIdle() }

// StatusOf returns the HTTP status of an API error, or 0.
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// CodeOf returns the short code of an API error ("not_found" …), or "".
func CodeOf(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// IsNotFound reports whether err is a 404 answer.
func IsNotFound(err error) bool { return StatusOf(err) == http.StatusNotFound }

// IsConflict reports whether err is a 409 answer (a name in use, a state
// that forbids the action).
func IsConflict(err error) bool { return StatusOf(err) == http.StatusConflict }

func path(parts ...string) string {
	p := ""
	for i, s := range parts {
		if i%2 == 1 {
			s = url.PathEscape(s)
		}
		p += s
	}
	return p
}
