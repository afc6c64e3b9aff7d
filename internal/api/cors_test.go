package api

import (
	"net/http"
	"path/filepath"
	"testing"

	"github.com/nexus-microvm/nexus/internal/auth"
)

// TestCORS: without a list no answer carries CORS headers; with one, a
// listed origin's preflight and calls get exactly that origin back, never
// credentials, and an unlisted origin gets no CORS headers.
func TestCORS(t *testing.T) {
	preflight := func(ts *testServer, origin string) http.Header {
		req, _ := http.NewRequest(http.MethodOptions, ts.http.URL+"/v1/vms", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header
	}
	get := func(ts *testServer, origin string) http.Header {
		req, _ := http.NewRequest(http.MethodGet, ts.http.URL+"/v1/vms", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Authorization", "Bearer "+ts.tokens[auth.RoleViewer])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET with Origin %s: %d", origin, resp.StatusCode)
		}
		return resp.Header
	}
	none := newTestServer(t)
	for _, h := range []http.Header{preflight(none, "https://evil.example"), get(none, "https://evil.example")} {
		if v := h.Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("no list: Access-Control-Allow-Origin %q; want none", v)
		}
	}
	listed := "https://console.example.com"
	ts := newTestServerAt(t, filepath.Join(t.TempDir(), "nexus.db"), func(d *Deps) {
		d.CORSOrigins = []string{listed, "http://localhost:3000"}
	})
	h := preflight(ts, listed)
	if h.Get("Access-Control-Allow-Origin") != listed || h.Get("Access-Control-Allow-Credentials") != "" ||
		h.Get("Access-Control-Allow-Methods") != "POST" || h.Get("Access-Control-Allow-Headers") == "" {
		t.Errorf("listed preflight headers %v", h)
	}
	if h := get(ts, listed); h.Get("Access-Control-Allow-Origin") != listed || h.Get("Access-Control-Expose-Headers") == "" {
		t.Errorf("listed GET headers %v", h)
	}
	for _, o := range []string{"https://evil.example", "https://console.example.com.evil.example", "http://console.example.com", "null"} {
		h := preflight(ts, o)
		for k := range h {
			if len(k) > 15 && k[:15] == "Access-Control-" {
				t.Errorf("unlisted origin %s: preflight has %s", o, k)
			}
		}
		if v := get(ts, o).Get("Access-Control-Allow-Origin"); v != "" {
			t.Errorf("unlisted origin %s: GET has Access-Control-Allow-Origin %q", o, v)
		}
	}
}

func TestParseCORSOrigins(t *testing.T) {
	got, err := ParseCORSOrigins(" https://A.example.com , http://localhost:3000,")
	if err != nil || len(got) != 2 || got[0] != "https://a.example.com" || got[1] != "http://localhost:3000" {
		t.Errorf("ParseCORSOrigins = %q, %v", got, err)
	}
	for _, bad := range []string{"*", "https://*.example.com", "example.com", "ftp://x", "https://x/path", "https://u@x", "https://x?q=1", "https://"} {
		if _, err := ParseCORSOrigins(bad); err == nil {
			t.Errorf("ParseCORSOrigins(%q) accepted", bad)
		}
	}
	if got, err := ParseCORSOrigins(""); err != nil || got != nil {
		t.Errorf("empty: %q, %v", got, err)
	}
}
