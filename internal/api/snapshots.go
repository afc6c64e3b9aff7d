package api

// snapshotRoutes registers the snapshots' routes.
func (s *Server) snapshotRoutes() {}
