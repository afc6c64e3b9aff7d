package httpmw

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Budgets bound the two halves of a server's way out, separately: a slow
// drain cannot eat the time the cleanup needs, nor the reverse.
type Budgets struct {
	// Drain is how long in-flight requests may take to finish once
	// shutdown starts. Streams do not count: they end at once (Closing).
	Drain time.Duration
	// Cleanup is how long after may take (waiting for background work,
	// flushing, closing the store).
	Cleanup time.Duration
}

type closingKey struct{}

// Closing returns a channel that is closed when the server that serves
// the request starts shutting down. Long answers (event streams) select on
// it and end at once, so they never hold a shutdown; short requests are
// left to finish within the drain budget. Outside Serve it never closes.
func Closing(ctx context.Context) <-chan struct{} {
	if ch, ok := ctx.Value(closingKey{}).(chan struct{}); ok {
		return ch
	}
	return nil
}

// Serve runs an HTTP server for h on ln until ctx ends, with the timeouts
// both Nexus servers use (no WriteTimeout: log streams are long answers).
// On the way out it ends the streams (Closing), waits up to b.Drain for
// in-flight requests, then runs after with a context of b.Cleanup
// (releasing what handlers use: background work, a store, networking) and
// closes the returned channel once after has returned.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, b Budgets, after func(ctx context.Context)) <-chan struct{} {
	closing := make(chan struct{})
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), closingKey{}, closing)
		},
		// The server's own complaints (refused TLS handshakes: a plain
		// HTTP client, a certificate of another CA) in the structured log.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	srv.RegisterOnShutdown(func() { close(closing) })
	served := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	go func() {
		defer close(done)
		select {
		case <-ctx.Done():
		case <-served:
		}
		drain, cancel := context.WithTimeout(context.Background(), b.Drain)
		if err := srv.Shutdown(drain); err != nil {
			log.Warn("shutdown: requests still running after the drain budget; closing them", "budget", b.Drain, "err", err)
			_ = srv.Close()
		}
		cancel()
		<-served
		if after != nil {
			cleanup, cancel := context.WithTimeout(context.Background(), b.Cleanup)
			after(cleanup)
			cancel()
		}
	}()
	return done
}
