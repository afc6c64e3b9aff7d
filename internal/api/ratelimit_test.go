package api

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
)

// clock is a settable clock for the limiters.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newLimitedServer(t *testing.T, l RateLimits) (*testServer, *clock) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l.Now = clk.now
	ts := newTestServerAt(t, filepath.Join(t.TempDir(), "nexus.db"), func(d *Deps) { d.RateLimits = l })
	return ts, clk
}

// callH is call with the answer's body and headers.
func (ts *testServer) callH(t *testing.T, method, path, token string) (int, string, http.Header) {
	t.Helper()
	resp, raw := ts.raw(t, method, path, token, "")
	return resp.StatusCode, string(raw), resp.Header
}

// TestRateLimitPerTokenAndClass: a token's reads past their bucket get
// 429 rate_limited with Retry-After, other classes and tokens are not
// touched, and the next window succeeds; /metrics counts the refusals.
func TestRateLimitPerTokenAndClass(t *testing.T) {
	ts, clk := newLimitedServer(t, RateLimits{Read: Rate{PerSecond: 1, Burst: 2}, Mutation: Rate{PerSecond: 1, Burst: 1}})
	viewer, op := ts.tokens[auth.RoleViewer], ts.tokens[auth.RoleOperator]
	for i := range 2 {
		if s, body, _ := ts.callH(t, "GET", "/v1/vms", viewer); s != 200 {
			t.Fatalf("read %d: %d %s", i+1, s, body)
		}
	}
	s, body, h := ts.callH(t, "GET", "/v1/vms", viewer)
	if s != http.StatusTooManyRequests || h.Get("Retry-After") != "1" || !strings.Contains(body, `"error":"rate_limited"`) || !strings.Contains(body, `"request_id"`) {
		t.Fatalf("3rd read: %d Retry-After %q %s; want 429 rate_limited, Retry-After 1", s, h.Get("Retry-After"), body)
	}
	// Another token's reads, and the same token's other classes, have
	// their own buckets (a viewer's stop is 403, past the limiter).
	if s, body, _ := ts.callH(t, "GET", "/v1/vms", op); s != 200 {
		t.Fatalf("another token's read: %d %s", s, body)
	}
	if s, body, _ := ts.callH(t, "POST", "/v1/vms/web/stop", viewer); s != http.StatusForbidden {
		t.Fatalf("the viewer's mutation: %d %s; want its own bucket (403 by role)", s, body)
	}
	if s, _, _ := ts.callH(t, "POST", "/v1/vms/web/stop", viewer); s != http.StatusTooManyRequests {
		t.Fatalf("the viewer's 2nd mutation: %d; want 429 (burst 1)", s)
	}
	// A refused call spends nothing: a second later one read is back.
	clk.advance(time.Second)
	if s, body, _ := ts.callH(t, "GET", "/v1/vms", viewer); s != 200 {
		t.Fatalf("read in the next window: %d %s", s, body)
	}
	if s, _, _ := ts.callH(t, "GET", "/v1/vms", viewer); s != http.StatusTooManyRequests {
		t.Fatalf("2nd read in the next window: %d; want 429", s)
	}
	// Unlimited classes (creates here) and public routes are not limited.
	if s, _, _ := ts.callH(t, "GET", "/healthz", ""); s != 200 {
		t.Fatalf("/healthz: %d", s)
	}
	_, metrics, _ := ts.callH(t, "GET", "/metrics", "")
	for _, want := range []string{
		`nexus_api_rate_limited_total{class="read"} 2`,
		`nexus_api_rate_limited_total{class="mutation"} 1`,
		`nexus_api_rate_limit{class="read",kind="rate"} 1`,
		`nexus_api_rate_limit{class="read",kind="burst"} 2`,
		`nexus_api_rate_limit{class="create",kind="rate"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestRateLimitFailedAuthPerSource: calls without a valid token spend
// their source's bucket; once it is empty every call from that source is
// refused before its token is checked (no hashing, no audit row), until
// the bucket refills.
func TestRateLimitFailedAuthPerSource(t *testing.T) {
	ts, clk := newLimitedServer(t, RateLimits{AuthFailure: Rate{PerSecond: 0.5, Burst: 3}})
	bad := auth.TokenPrefix + "0123456789ab_wrongwrongwrongwrongwrong"
	for i, tok := range []string{"", bad, bad} {
		if s, body, _ := ts.callH(t, "POST", "/v1/vms/web/stop", tok); s != http.StatusUnauthorized {
			t.Fatalf("failed call %d: %d %s; want 401", i+1, s, body)
		}
	}
	rows := len(auditRows(t, ts))
	s, body, h := ts.callH(t, "POST", "/v1/vms/web/stop", bad)
	if s != http.StatusTooManyRequests || h.Get("Retry-After") != "2" || !strings.Contains(body, "without a valid token") {
		t.Fatalf("4th failed call: %d Retry-After %q %s; want 429, Retry-After 2", s, h.Get("Retry-After"), body)
	}
	// A valid token from the same source waits as well: the source is
	// refused before any token is looked at.
	if s, _, _ := ts.callH(t, "GET", "/v1/vms", ts.tokens[auth.RoleAdmin]); s != http.StatusTooManyRequests {
		t.Fatalf("valid token from the blocked source: %d; want 429", s)
	}
	if got := len(auditRows(t, ts)); got != rows {
		t.Fatalf("refused calls wrote audit rows: %d → %d", rows, got)
	}
	// Valid tokens spend nothing from the source's bucket.
	clk.advance(2 * time.Second)
	for range 5 {
		if s, body, _ := ts.callH(t, "GET", "/v1/vms", ts.tokens[auth.RoleAdmin]); s != 200 {
			t.Fatalf("valid token after the refill: %d %s", s, body)
		}
	}
}

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rate
		bad  bool
	}{
		{"", Rate{}, false},
		{"0", Rate{}, false},
		{"0:5", Rate{}, false},
		{"20", Rate{20, 40}, false},
		{"0.5", Rate{0.5, 1}, false},
		{"20:7", Rate{20, 7}, false},
		{" 3:3 ", Rate{3, 3}, false},
		{"-1", Rate{}, true},
		{"x", Rate{}, true},
		{"5:0", Rate{}, true},
		{"5:-2", Rate{}, true},
		{"5:x", Rate{}, true},
		{"Inf", Rate{}, true},
		{"NaN", Rate{}, true},
	} {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseRate(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3":             "10.1.2.3",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2::ffff":   "2001:db8:1:2::/64",
		"::ffff:10.1.2.3":      "::ffff:10.1.2.3",
		"not an address":       "not an address",
	} {
		if got := sourceKey(in); got != want {
			t.Errorf("sourceKey(%q) = %q; want %q", in, got, want)
		}
	}
}

func auditRows(t *testing.T, ts *testServer) []store.AuditEntry {
	t.Helper()
	rows, err := ts.st.ListAudit(context.Background(), store.AuditFilter{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
