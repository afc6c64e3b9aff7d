package httpmw

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve runs an HTTP server for h on ln until ctx ends, with the timeouts
// both Nexus servers use (no WriteTimeout: log streams are long answers).
// On the way out it waits up to grace for in-flight requests — Serve
// itself returns as soon as shutdown starts — then runs after (releasing
// what handlers use: a store, networking) and closes the returned channel.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, grace time.Duration, after func(ctx context.Context)) <-chan struct{} {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
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
		shut, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		_ = srv.Shutdown(shut)
		if after != nil {
			after(shut)
		}
	}()
	return done
}
