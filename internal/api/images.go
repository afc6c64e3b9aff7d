package api

// imageRoutes registers the image registry's routes.
func (s *Server) imageRoutes() {}
