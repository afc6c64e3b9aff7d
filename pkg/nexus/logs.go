package nexus

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Logs returns the last tail lines of a VM's log: source "fc" is
// firecracker's log, "console" the guest's serial console.
func (c *Client) Logs(ctx context.Context, ref, source string, tail int) (apitypes.LogLines, error) {
	var l apitypes.LogLines
	q := url.Values{"source": {source}, "tail": {strconv.Itoa(tail)}}
	return l, c.Do(ctx, http.MethodGet, path("/v1/vms/", ref, "/logs"), q, nil, &l)
}

// TailPath returns the last lines of a file in a VM's run dir (dev mode).
func (c *Client) TailPath(ctx context.Context, file string, tail int) (apitypes.LogLines, error) {
	var l apitypes.LogLines
	return l, c.Do(ctx, http.MethodGet, "/v1/logs/tail", url.Values{"path": {file}, "tail": {strconv.Itoa(tail)}}, nil, &l)
}

// StreamOptions choose what a log stream sends.
type StreamOptions struct {
	// Source is "fc" (default) or "console".
	Source string
	// Tail starts with the last Tail lines (0: only new lines).
	Tail int
	// LastEventID resumes after an event a previous stream delivered
	// (LogLine.ID); it wins over Tail.
	LastEventID string
	// Reconnects bounds how many times the stream reconnects, resuming
	// after the last line delivered, when the connection breaks (default
	// 5; negative: never).
	Reconnects int
}

// LogLine is one line of a log stream.
type LogLine struct {
	// ID is the event's id: pass it as StreamOptions.LastEventID to resume
	// after this line.
	ID string
	// Source is "fc" or "console".
	Source string
	Text   string
}

// LogStream delivers a VM's log lines as they are written, reconnecting
// after the last line delivered when the connection breaks, so no line is
// lost or repeated. Read it with Next and Line; Close it when done.
type LogStream struct {
	c      *Client
	ctx    context.Context
	ref    string
	opt    StreamOptions
	body   io.ReadCloser
	sc     *bufio.Scanner
	line   LogLine
	last   string
	err    error
	broken int // reconnects in a row without a line delivered
	closed atomic.Bool
}

// StreamLogs opens a VM's log stream (Server-Sent Events). The first
// connection's errors (404, 409 for a VM without a host, 429 when the
// manager relays too many streams) are returned here.
func (c *Client) StreamLogs(ctx context.Context, ref string, o StreamOptions) (*LogStream, error) {
	if o.Source == "" {
		o.Source = "fc"
	}
	if o.Reconnects == 0 {
		o.Reconnects = 5
	}
	s := &LogStream{c: c, ctx: ctx, ref: ref, opt: o, last: o.LastEventID}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *LogStream) connect() error {
	q := url.Values{"source": {s.opt.Source}}
	h := http.Header{}
	if s.last != "" {
		h.Set("Last-Event-ID", s.last)
	} else if s.opt.Tail > 0 {
		q.Set("tail", strconv.Itoa(s.opt.Tail))
	}
	resp, err := s.c.c.StreamHeader(s.ctx, path("/v1/vms/", s.ref, "/logs/stream"), q, h)
	if err != nil {
		return err
	}
	s.body = resp.Body
	s.sc = bufio.NewScanner(resp.Body)
	s.sc.Buffer(make([]byte, 64<<10), 1<<20)
	return nil
}

// Next waits for the next line; false means the stream ended: the context
// is done, Close was called, or it could not reconnect (Err says why).
func (s *LogStream) Next() bool {
	for {
		if s.sc != nil && s.readEvent() {
			s.broken = 0
			return true
		}
		if s.sc != nil {
			s.body.Close()
			if err := s.sc.Err(); err != nil && !errors.Is(err, io.EOF) {
				s.err = err
			}
			s.sc = nil
		}
		if s.ctx.Err() != nil || s.closed.Load() {
			s.err = nil // the caller ended it
			return false
		}
		if s.opt.Reconnects < 0 || s.broken >= s.opt.Reconnects {
			if s.err == nil {
				s.err = errors.New("log stream ended")
			}
			return false
		}
		s.broken++
		t := time.NewTimer(backoff(s.c.retry, s.broken))
		select {
		case <-s.ctx.Done():
			t.Stop()
			s.err = nil
			return false
		case <-t.C:
		}
		if err := s.connect(); err != nil {
			s.err = err
			if ae := (*APIError)(nil); errors.As(err, &ae) && ae.Status < 500 && ae.Status != http.StatusTooManyRequests {
				return false // the VM is gone, or the token: no use retrying
			}
		} else {
			s.err = nil
		}
	}
}

// readEvent reads up to the end of the next event with data.
func (s *LogStream) readEvent() bool {
	var ev LogLine
	has := false
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if has {
				s.line = ev
				if ev.ID != "" {
					s.last = ev.ID
				}
				return true
			}
		case strings.HasPrefix(line, ":"): // keep-alive comment
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				ev.ID = value
			case "event":
				ev.Source = value
			case "data":
				if has {
					ev.Text += "\n"
				}
				ev.Text += value
				has = true
			}
		}
	}
	return false
}

// Line is the line Next read.
func (s *LogStream) Line() LogLine { return s.line }

// LastEventID is the id of the last line delivered: where a new stream
// would resume.
func (s *LogStream) LastEventID() string { return s.last }

// Err is why the stream ended, nil when its context ended it.
func (s *LogStream) Err() error { return s.err }

// Close ends the stream.
func (s *LogStream) Close() error {
	s.closed.Store(true)
	if s.body != nil {
		return s.body.Close()
	}
	return nil
}

// FollowLogs calls fn with each new line of a VM's log until ctx ends
// (nil) or the stream cannot go on (its error).
func (c *Client) FollowLogs(ctx context.Context, ref, source string, fn func(line string)) error {
	s, err := c.StreamLogs(ctx, ref, StreamOptions{Source: source})
	if err != nil {
		return err
	}
	defer s.Close()
	for s.Next() {
		fn(s.Line().Text)
	}
	return s.Err()
}
