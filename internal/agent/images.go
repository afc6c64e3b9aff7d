package agent

import "github.com/go-chi/chi/v5"

// vmImageRoutes adds per-VM routes for preparing image-backed drives.
func (a *Agent) vmImageRoutes(r chi.Router) {}

// imageRoutes adds host-level image routes (checksums, file checks).
func (a *Agent) imageRoutes(r chi.Router) {}
