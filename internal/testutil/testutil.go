// Package testutil holds the few helpers tests across Nexus share: how a
// test that needs root or Postgres behaves when its dependency is missing,
// and leak checks. It is imported only from _test.go files.
package testutil

import (
	"os"
	"slices"
	"testing"
	"time"
)

// OnCI reports whether the tests run under .ci/run, where every dependency
// (root, Postgres) must be present: a missing one fails instead of skipping.
func OnCI() bool { return os.Getenv("NEXUS_CI") != "" }

// RequireRoot skips the test with a clear message when not root, and fails
// it on CI.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if OnCI() {
		tb.Fatal("this test needs root (netlink, TAP devices, namespaces); CI runs as root, so this is a broken CI machine")
	}
	tb.Skip("skipping: this test needs root (netlink, TAP devices, namespaces); run `sudo make test`")
}

// PostgresURL returns NEXUS_TEST_DATABASE_URL, skipping the test when it is
// unset outside CI and failing it on CI.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("NEXUS_TEST_DATABASE_URL")
	if u != "" {
		return reachPostgres(u)
	}
	if OnCI() {
		tb.Fatal("NEXUS_TEST_DATABASE_URL is not set on CI")
	}
	tb.Skip("skipping: set NEXUS_TEST_DATABASE_URL to a Postgres database to run this test")
	return ""
}

// ReportLatency adds p50, p95 and p99 of durs (in ms) to a benchmark's
// output under the given prefix, e.g. "proxy-p95-ms".
func ReportLatency(b *testing.B, prefix string, durs []time.Duration) {
	b.Helper()
	if len(durs) == 0 {
		return
	}
	s := slices.Clone(durs)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(q * float64(len(s)-1))
		return float64(s[i].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), prefix+"-p50-ms")
	b.ReportMetric(at(0.95), prefix+"-p95-ms")
	b.ReportMetric(at(0.99), prefix+"-p99-ms")
}
