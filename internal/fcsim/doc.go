// Package fcsim is firecracker-sim: a stand-in for the firecracker binary on
// hosts without KVM. It takes firecracker's flags, serves firecracker's API
// on the same unix socket with firecracker's status codes and fault
// messages, opens the same host files and TAP devices at the same moments,
// writes firecracker's log and metrics formats, and runs a simulated guest
// whose serial console (stdout) prints one line per second of guest run time:
//
//	sim-guest: counter=<N>
//
// N starts at 1 after the first second of run time; paused time does not
// count, and a VM restored from a snapshot continues from the saved count.
//
// Everything a caller can observe at the process boundary follows the
// Firecracker v1.16 line (see internal/firecracker/versions.go); the version
// string always ends in "-sim". The JSON models come from
// internal/firecracker; this package adds the serde-like request validation
// that firecracker performs before it acts.
//
// It imports only the standard library, golang.org/x/sys and
// internal/firecracker, so that the binary stays small (1,000 simulated VMs
// must fit on a small host).
package fcsim
