package api

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humachi"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

type logsInput struct {
	ID     string `path:"id" maxLength:"64"`
	Tail   int    `query:"tail" minimum:"0" maximum:"10000" default:"100" doc:"number of lines"`
	Source string `query:"source" enum:"fc,console" default:"fc" doc:"fc: firecracker's log; console: the guest serial console"`
}

type logsOutput struct {
	Body apitypes.LogLines
}

func (s *Server) vmLogs(ctx context.Context, in *logsInput) (*logsOutput, error) {
	ll, err := s.vms.Logs(ctx, scope(ctx), in.ID, in.Source, in.Tail)
	if err != nil {
		return nil, err
	}
	return &logsOutput{Body: apitypes.LogLines{Source: ll.Source, Path: ll.Path, Lines: ll.Lines}}, nil
}

type streamInput struct {
	ID          string `path:"id" maxLength:"64"`
	Source      string `query:"source" enum:"fc,console" default:"fc"`
	Tail        int    `query:"tail" minimum:"0" maximum:"10000" doc:"start with the last N lines (default 0: only new lines)"`
	LastEventID string `header:"Last-Event-ID" maxLength:"32" doc:"resume after this event id (what a reconnecting EventSource sends); wins over tail"`
}

// How long a relayed stream may stay silent or blocked: the agent writes a
// keep-alive comment every 15 s, so an upstream quiet for longer than
// streamIdle is gone; a caller that takes longer than streamWriteTimeout
// to accept a write stopped reading.
const (
	streamIdle         = 45 * time.Second
	streamWriteTimeout = 30 * time.Second
)

// vmLogsStream relays the agent's event stream (ids, keep-alives and all)
// to the caller until either side goes away, goes quiet or stops reading.
func (s *Server) vmLogsStream(ctx context.Context, in *streamInput) (*huma.StreamResponse, error) {
	p, _ := principal(ctx)
	vm, err := s.vms.GetVM(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	q, err := s.quotas.GetQuota(ctx, vm.Project)
	if err != nil {
		return nil, err
	}
	release, err := s.streams.acquire(p.TokenID, vm.Project, q.Limits.Streams)
	if err != nil {
		return nil, err
	}
	resp, err := s.vms.StreamLogsFrom(ctx, scope(ctx), in.ID, agentapi.StreamOptions{Source: in.Source, Tail: in.Tail, LastEventID: in.LastEventID})
	if err != nil {
		release()
		return nil, err
	}
	return &huma.StreamResponse{Body: func(hctx huma.Context) {
		defer release()
		defer resp.Body.Close()
		// The relay ends when the caller goes, when the agent is quiet for
		// streamIdle, or at once when the manager shuts down: a stream must
		// never hold a shutdown.
		done := make(chan struct{})
		defer close(done)
		idle := time.NewTimer(streamIdle)
		defer idle.Stop()
		go func() {
			select {
			case <-done:
			case <-hctx.Context().Done():
			case <-httpmw.Closing(hctx.Context()):
			case <-idle.C:
				s.log.Debug("log stream idle; ending it", "vm_id", in.ID, "idle", streamIdle)
			}
			resp.Body.Close()
		}()
		hctx.SetHeader("Content-Type", "text/event-stream")
		hctx.SetHeader("Cache-Control", "no-cache")
		// Proxies (nginx) must not buffer the stream.
		hctx.SetHeader("X-Accel-Buffering", "no")
		hctx.SetStatus(http.StatusOK)
		w := hctx.BodyWriter()
		_, rw := humachi.Unwrap(hctx)
		rc := http.NewResponseController(rw)
		// The connection may serve another request after the stream: it
		// must not inherit a deadline.
		defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
		flusher, _ := w.(http.Flusher)
		if flusher != nil {
			flusher.Flush() // headers now: the client knows the stream is open before the first line
		}
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				idle.Reset(streamIdle)
				// A caller that stops reading must not hold its slot, its
				// descriptors and this goroutine forever.
				_ = rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				if flusher != nil {
					flusher.Flush()
				}
			}
			if err != nil {
				if err != io.EOF {
					s.log.Debug("log stream ended", "vm_id", in.ID, "err", err)
				}
				return
			}
		}
	}}, nil
}

type tailPathInput struct {
	Path string `query:"path" required:"true" maxLength:"4096"`
	Tail int    `query:"tail" minimum:"0" maximum:"10000" default:"100"`
}

func (s *Server) tailPath(ctx context.Context, in *tailPathInput) (*logsOutput, error) {
	ll, err := s.vms.TailPath(ctx, scope(ctx), in.Path, in.Tail)
	if err != nil {
		return nil, err
	}
	return &logsOutput{Body: apitypes.LogLines{Source: ll.Source, Path: ll.Path, Lines: ll.Lines}}, nil
}

type metricsRecentInput struct {
	ID string `query:"id" required:"true" maxLength:"64" doc:"VM id"`
}

type metricsRecentOutput struct {
	Body apitypes.MetricsRecent
}

func (s *Server) metricsRecent(ctx context.Context, in *metricsRecentInput) (*metricsRecentOutput, error) {
	if in.ID == "" {
		return nil, apierr.BadRequest("id is required")
	}
	rec, err := s.vms.Metrics(ctx, scope(ctx), in.ID)
	if err != nil {
		return nil, err
	}
	return &metricsRecentOutput{Body: apitypes.MetricsRecent{ID: in.ID, At: rec.At, Record: rec.Record}}, nil
}
