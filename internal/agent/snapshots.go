package agent

import "github.com/go-chi/chi/v5"

// vmSnapshotRoutes adds per-VM snapshot file routes.
func (a *Agent) vmSnapshotRoutes(r chi.Router) {}

// snapshotRoutes adds host-level snapshot routes.
func (a *Agent) snapshotRoutes(r chi.Router) {}
