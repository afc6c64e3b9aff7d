// Package httpmw holds the HTTP middleware the manager and the agent share:
// request ids and structured access logs (request_id, latency, status and,
// for relayed calls, the upstream status).
package httpmw

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// HeaderRequestID carries the request id both ways.
const HeaderRequestID = "X-Request-Id"

type ctxKey int

const (
	keyRequestID ctxKey = iota
	keyInfo
)

// info is filled by handlers for the access log.
type info struct {
	upstreamStatus int
	errCode        string
}

// RequestID returns the request id of ctx ("" outside a request).
func RequestID(ctx context.Context) string {
	s, _ := ctx.Value(keyRequestID).(string)
	return s
}

// WithRequestID returns ctx carrying id (for calls made on a request's behalf).
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, keyRequestID, id)
}

// SetUpstreamStatus records the status firecracker (or an agent) answered,
// for the access log.
func SetUpstreamStatus(ctx context.Context, status int) {
	if i, ok := ctx.Value(keyInfo).(*info); ok {
		i.upstreamStatus = status
	}
}

// SetErrorCode records the error code of a failed request, for the access log.
func SetErrorCode(ctx context.Context, code string) {
	if i, ok := ctx.Value(keyInfo).(*info); ok {
		i.errCode = code
	}
}

// NewID returns a random request id.
func NewID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// validID accepts an incoming id only if it is short and plain, so a caller
// cannot inject log lines or huge headers.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r == ':' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

// Flush lets streaming handlers (SSE) flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Middleware assigns a request id (reusing a sane incoming X-Request-Id),
// echoes it in the answer and logs one line per request. Requests to
// quietPaths (health checks, metrics scrapes) are logged at debug level.
func Middleware(log *slog.Logger, quietPaths ...string) func(http.Handler) http.Handler {
	quiet := map[string]bool{}
	for _, p := range quietPaths {
		quiet[p] = true
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			id := r.Header.Get(HeaderRequestID)
			if !validID(id) {
				id = NewID()
			}
			w.Header().Set(HeaderRequestID, id)
			inf := &info{}
			ctx := context.WithValue(context.WithValue(r.Context(), keyRequestID, id), keyInfo, inf)
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r.WithContext(ctx))
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			level := slog.LevelInfo
			if quiet[r.URL.Path] || strings.HasSuffix(r.URL.Path, "/heartbeat") {
				level = slog.LevelDebug
			}
			if sw.status >= 500 {
				level = slog.LevelError
			}
			attrs := []slog.Attr{
				slog.String("request_id", id),
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", sw.status),
				slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
				slog.Int("bytes", sw.bytes),
			}
			if inf.upstreamStatus != 0 {
				attrs = append(attrs, slog.Int("upstream_status", inf.upstreamStatus))
			}
			if inf.errCode != "" {
				attrs = append(attrs, slog.String("error", inf.errCode))
			}
			log.LogAttrs(ctx, level, "http", attrs...)
		})
	}
}
