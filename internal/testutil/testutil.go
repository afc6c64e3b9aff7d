// Package testutil holds the few helpers tests across Nexus share: how a
// test that needs root or Postgres behaves when its dependency is missing,
// and leak checks. It is imported only from _test.go files.
package testutil

import (
	"os"
	"testing"
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
		return u
	}
	if OnCI() {
		tb.Fatal("NEXUS_TEST_DATABASE_URL is not set on CI")
	}
	tb.Skip("skipping: set NEXUS_TEST_DATABASE_URL to a Postgres database to run this test")
	return ""
}
