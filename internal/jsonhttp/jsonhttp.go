// Package jsonhttp is the one JSON-over-HTTP caller in Nexus: the manager's
// client of its agents, the agents' client of the manager and the API
// client of the CLI and the tests all send requests and read answers (and
// the error contract of package apierr) through it, with the same limits.
package jsonhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// MaxAnswer bounds how much of an answer is read: JSON answers of the
// Nexus APIs are far smaller; a larger one is an error, not a memory spike.
const MaxAnswer = 32 << 20

// NewTransport is the transport every caller shares the settings of: many
// idle connections per host (a manager talks to each agent in parallel).
func NewTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
}

// Caller sends JSON requests to one base URL with a bearer token.
type Caller struct {
	Base  string // e.g. "http://10.0.0.5:9090/agent/v1"; no trailing slash
	Token string
	HC    *http.Client
	// Timeout bounds a call whose context has no deadline; 0: none.
	Timeout time.Duration
	// Unreachable wraps a failure to reach Base at all (nil: as is).
	Unreachable func(error) error
}

// New returns a caller of base with its own transport.
func New(base, token string) *Caller {
	return &Caller{Base: strings.TrimSuffix(base, "/"), Token: token, HC: &http.Client{Transport: NewTransport()}}
}

// Authorize sets the bearer token and the caller's request id, so one id
// follows a request from the CLI through the manager to the agent.
func (c *Caller) Authorize(req *http.Request) {
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if id := httpmw.RequestID(req.Context()); id != "" {
		req.Header.Set(httpmw.HeaderRequestID, id)
	}
}

// Do sends one request to Base+path with query q; in is JSON-encoded when
// not nil, and a 2xx answer is decoded into out when not nil. A non-2xx
// answer is an *apierr.Error (the contract's fields, or the raw text).
func (c *Caller) Do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	if _, has := ctx.Deadline(); !has && c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	u := c.Base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	c.Authorize(req)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.send(req, in != nil)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return c.unreachable(err)
	}
	if len(raw) > MaxAnswer {
		return fmt.Errorf("%s %s: answer larger than %d bytes", method, path, MaxAnswer)
	}
	if resp.StatusCode >= 300 {
		return decodeAnswer(resp, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// send sends req, again (twice at most, 50 then 100 ms later) when the
// connection was refused: nothing reached the server, so even a POST is
// safe to repeat, and a busy host's full accept queue does not fail an
// operation.
func (c *Caller) send(req *http.Request, hasBody bool) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.HC.Do(req)
		var op *net.OpError
		if err == nil || attempt == 2 || !errors.As(err, &op) || op.Op != "dial" {
			return resp, err
		}
		if hasBody {
			if req.GetBody == nil {
				return resp, err
			}
			b, gerr := req.GetBody()
			if gerr != nil {
				return resp, err
			}
			req.Body = b
		}
		t := time.NewTimer(time.Duration(50<<attempt) * time.Millisecond)
		select {
		case <-req.Context().Done():
			t.Stop()
			return resp, err
		case <-t.C:
		}
	}
}

// Stream sends a GET for a long answer (an event stream) and returns the
// response for the caller to read and close; a non-2xx answer is an
// *apierr.Error.
func (c *Caller) Stream(ctx context.Context, path string, q url.Values) (*http.Response, error) {
	return c.StreamHeader(ctx, path, q, nil)
}

// StreamHeader is Stream with request headers of the caller's
// (Last-Event-ID, to resume an event stream).
func (c *Caller) StreamHeader(ctx context.Context, path string, q url.Values, h http.Header) (*http.Response, error) {
	u := c.Base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	c.Authorize(req)
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.HC.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, decodeAnswer(resp, raw)
	}
	return resp, nil
}

// CloseIdle drops idle connections (on shutdown, so no transport goroutine
// outlives its owner).
func (c *Caller) CloseIdle() { c.HC.CloseIdleConnections() }

func (c *Caller) unreachable(err error) error {
	if c.Unreachable != nil {
		return c.Unreachable(err)
	}
	return err
}

// DecodeError reads an error answer: the contract's body, or, from
// something that does not speak it (a proxy, a crash page), its text.
func DecodeError(status int, raw []byte) error {
	var e apierr.Error
	if json.Unmarshal(raw, &e) != nil || e.Code == "" {
		e = apierr.Error{Code: apierr.CodeFor(status), Message: strings.TrimSpace(string(raw))}
	}
	e.Status = status
	return &e
}

// decodeAnswer is DecodeError with the answer's Retry-After (seconds).
func decodeAnswer(resp *http.Response, raw []byte) error {
	err := DecodeError(resp.StatusCode, raw)
	if s, e := strconv.Atoi(resp.Header.Get("Retry-After")); e == nil && s >= 0 {
		err.(*apierr.Error).RetryAfter = time.Duration(s) * time.Second
	}
	return err
}

// IsStatus reports whether err is an answer with that status.
func IsStatus(err error, status int) bool {
	var e *apierr.Error
	return errors.As(err, &e) && e.Status == status
}
