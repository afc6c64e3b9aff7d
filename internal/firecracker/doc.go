// Package firecracker is the one place in Nexus that knows Firecracker's
// external interface: the JSON models of every API endpoint, the
// command-line flags, the endpoint table and the differences between
// release lines (all in package model, re-exported here), and a typed
// client over a unix socket or an HTTP relay that finds out which
// firecracker it talks to and refuses, with a clear error, a call that
// release cannot serve (compat.go).
//
// It must not import any other Nexus package.
package firecracker
