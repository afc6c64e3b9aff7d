// Package fcsim is firecracker-sim: a stand-in for the firecracker binary on
// hosts without KVM. It takes firecracker's flags, serves firecracker's API
// on the same unix socket with firecracker's status codes and fault
// messages, opens the same host files and TAP devices at the same moments,
// writes firecracker's log and metrics formats, and runs a simulated guest
// whose serial console (stdout, or serial_out_path) prints, once per boot
// when the guest first runs,
//
//	nexus-guest: ready
//
// and then one line per second of guest run time:
//
//	sim-guest: counter=<N>
//
// N starts at 1 after the first second of run time; paused time does not
// count, and a VM restored from a snapshot continues from the saved count.
//
// Everything a caller can observe at the process boundary follows the
// Firecracker v1.16 line (see internal/firecracker/model/versions.go): the
// wire format of micro_http, serde_json's errors and output, the fault
// texts, the way files are opened. The version string always ends in
// "-sim". docs/firecracker-sim.md lists every known difference. The JSON
// models come from internal/firecracker/model; this package adds the
// serde-like decoding (serde.go) and encoding (json.go) firecracker does.
//
// It imports only the standard library, golang.org/x/sys and
// internal/firecracker/model — not the typed client, whose HTTP and TLS
// code would double the binary and its start time (thousands of simulated
// VMs must fit on a small host; cmd/firecracker-sim's TestDependencies
// holds the line).
package fcsim
