package vmm

import (
	"fmt"
	"os/exec"

	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/netnsutil"
	"github.com/nexus-microvm/nexus/internal/sysmon"
)

// startInNetNS starts cmd in the network namespace mounted at path: the
// child is forked from a thread switched into it (a process inherits the
// namespaces of the thread that forks it), and the thread returns to the
// agent's namespace afterwards.
func startInNetNS(path string, cmd *exec.Cmd) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return netnsutil.Do(ns, func() error { return sysmon.OwnSlack(cmd.Start) })
}
