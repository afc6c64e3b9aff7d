package api

// templateRoutes registers the templates' routes.
func (s *Server) templateRoutes() {}
