package cli

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
)

// startPprof serves Go's profiler on addr (NEXUS_PPROF, e.g. 127.0.0.1:6060)
// for operators chasing CPU or memory; off unless set.
func startPprof(addr string, log *slog.Logger) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			log.Error("pprof listener", "addr", addr, "err", err)
		}
	}()
	log.Info("profiler listening", "addr", addr)
}
