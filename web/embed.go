// Package web is the Nexus web console: static files (plain JavaScript
// modules, CSS and the vendored uPlot) embedded into the nexus binary and
// served by the manager at /ui/. There is no build step: what is in
// static/ is what the browser gets, so the console works offline and
// `make build` needs neither Node.js nor the network. Every piece of data
// comes from the manager's JSON API, called with the bearer token the user
// signs in with; this package serves files and nothing else.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// file is one embedded file, ready to serve.
type file struct {
	body  []byte
	etag  string
	ctype string
}

// Handler serves the console's files; mount it with the /ui/ prefix
// stripped. "" and "index.html" are the page; other names are its assets.
// Files are revalidated on every load (ETag) so a new binary's console is
// never mixed with a cached older one.
func Handler() (http.Handler, error) {
	files := map[string]file{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return fmt.Errorf("web: read %s: %w", p, err)
		}
		sum := sha256.Sum256(b)
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		files[strings.TrimPrefix(p, "static/")] = file{body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ct}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, ok := files["index.html"]; !ok {
		return nil, fmt.Errorf("web: index.html is not embedded")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == "" {
			name = "index.html"
		}
		f, ok := files[name]
		if !ok {
			http.Error(w, "no such file in the console", http.StatusNotFound)
			return
		}
		h := w.Header()
		securityHeaders(h)
		h.Set("Content-Type", f.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	}), nil
}

// securityHeaders: the console runs only its own files and talks only to
// its own origin. No inline script is allowed, so injected markup cannot
// run; the token lives in session storage and is sent as a header, never
// as a cookie, so other sites cannot make requests with it.
func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
}
