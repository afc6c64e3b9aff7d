package api

import (
	"fmt"
	"net/http"

	"github.com/nexus-microvm/nexus/web"
)

// uiRoutes serves the web console at /ui/ and sends a browser that opens
// the manager's root there.
func (s *Server) uiRoutes() error {
	h, err := web.Handler()
	if err != nil {
		return fmt.Errorf("web console: %w", err)
	}
	toUI := func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusFound) }
	s.mux.Get("/", toUI)
	s.mux.Get("/ui", toUI)
	s.mux.Handle("/ui/*", http.StripPrefix("/ui", h))
	return nil
}
