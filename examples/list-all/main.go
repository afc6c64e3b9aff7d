// Command list-all prints every VM the token can see, page by page, with
// the SDK's iterator, and counts them by state.
//
//	NEXUS_ADDR=http://127.0.0.1:8080 NEXUS_TOKEN=… go run ./examples/list-all -state running
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/nexus-microvm/nexus/pkg/nexus"
)

func main() {
	state := flag.String("state", "", "only VMs in this state")
	flag.Parse()
	c := nexus.New(os.Getenv("NEXUS_ADDR"), os.Getenv("NEXUS_TOKEN"))
	byState := map[string]int{}
	for vm, err := range c.VMs(context.Background(), nexus.ListVMsOptions{State: *state, Limit: 500}) {
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			if nexus.StatusOf(err) == 401 {
				fmt.Fprintln(os.Stderr, "set NEXUS_TOKEN to an API token")
			}
			os.Exit(1)
		}
		fmt.Printf("%s\t%s\t%s\n", vm.ID, vm.Name, vm.State)
		byState[vm.State]++
	}
	fmt.Fprintln(os.Stderr, byState)
}
