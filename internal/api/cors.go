package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/rs/cors"
)

// ParseCORSOrigins reads NEXUS_CORS_ORIGINS: a comma-separated list of
// exact origins, scheme://host[:port], http or https, no path. A wildcard
// is refused: the API's bearer tokens must never be usable from any page.
func ParseCORSOrigins(s string) ([]string, error) {
	var out []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if strings.Contains(o, "*") {
			return nil, fmt.Errorf("CORS origin %q: wildcards are not allowed; list each origin exactly", o)
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("CORS origin %q: want scheme://host[:port], e.g. https://console.example.com", o)
		}
		out = append(out, u.Scheme+"://"+strings.ToLower(u.Host))
	}
	return out, nil
}

// corsMiddleware answers preflights of the listed origins and marks their
// answers for the browser (Access-Control-Allow-Origin: that origin, Vary:
// Origin). Other origins get no CORS headers, so browsers keep their pages
// out. Credentials (cookies) are never allowed: the API authenticates with
// the Authorization header, which a page must send itself.
func corsMiddleware(origins []string) func(http.Handler) http.Handler {
	c := cors.New(cors.Options{
		AllowedOrigins:   origins,
		AllowedMethods:   []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete},
		AllowedHeaders:   []string{"Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id"},
		ExposedHeaders:   []string{"X-Request-Id", "Retry-After", "Location"},
		AllowCredentials: false,
		MaxAge:           600,
	})
	return c.Handler
}
