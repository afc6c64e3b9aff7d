// Command create-and-follow creates a VM with the Go SDK, prints its
// console as it boots, and deletes it on Ctrl-C.
//
//	NEXUS_ADDR=http://127.0.0.1:8080 NEXUS_TOKEN=… go run ./examples/create-and-follow -kernel-image vmlinux -rootfs-image busybox
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

func main() {
	name := flag.String("name", "sdk-example", "the VM's name")
	kernel := flag.String("kernel-image", "", "a registered kernel image (its id)")
	rootfs := flag.String("rootfs-image", "", "a registered rootfs image (its id)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *name, *kernel, *rootfs); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, name, kernel, rootfs string) error {
	c := nexus.New(os.Getenv("NEXUS_ADDR"), os.Getenv("NEXUS_TOKEN"))
	vm, err := c.CreateVM(ctx, apitypes.CreateVMRequest{
		Name:     name,
		VMConfig: apitypes.VMConfig{KernelImageID: kernel, RootfsImageID: rootfs},
	}, true)
	var ae *nexus.APIError
	switch {
	case errors.As(err, &ae) && ae.Code == "name_taken":
		return fmt.Errorf("%s (%s)", ae.Message, ae.Suggestion)
	case err != nil:
		return err
	}
	fmt.Fprintf(os.Stderr, "%s is %s at %s; its console follows (Ctrl-C deletes it)\n", vm.Name, vm.State, vm.IP)
	// The stream resumes after the last line if the connection breaks.
	s, err := c.StreamLogs(ctx, vm.ID, nexus.StreamOptions{Source: "console", Tail: 100})
	if err != nil {
		return err
	}
	for s.Next() {
		fmt.Println(s.Line().Text)
	}
	s.Close()
	// ctx is done: delete with a fresh context.
	return c.DeleteVM(context.WithoutCancel(ctx), vm.ID)
}
