// Command firecracker-sim is a stand-in for the firecracker binary on hosts
// without KVM: same flags, same API socket, same files. See package
// internal/fcsim.
package main

import (
	"context"
	"os"

	"github.com/nexus-microvm/nexus/internal/fcsim"
)

func main() {
	fcsim.Exit(fcsim.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}
