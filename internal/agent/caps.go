package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability is a Linux capability the agent needs, and why. The agent
// runs with exactly these (as uid 0 with a reduced bounding set, e.g.
// systemd's CapabilityBoundingSet=, see docs/security.md); it checks them
// at start and names the missing ones.
type Capability struct {
	Name string
	Bit  int
	Why  string
}

var (
	baseCaps = []Capability{
		{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN, "bridge, TAP devices and their owners, nftables NAT, ip_forward"},
	}
	jailCaps = []Capability{
		{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN, "jail: new mount and PID namespaces, bind mounts, pivot_root"},
		{"CAP_SETUID", unix.CAP_SETUID, "jail: run each VMM as its own uid"},
		{"CAP_SETGID", unix.CAP_SETGID, "jail: run each VMM as its own gid, with no supplementary groups"},
		{"CAP_SETPCAP", unix.CAP_SETPCAP, "jail: empty the VMM's capability bounding set"},
		{"CAP_MKNOD", unix.CAP_MKNOD, "jail: /dev/kvm, /dev/net/tun and /dev/urandom in the chroot"},
		{"CAP_CHOWN", unix.CAP_CHOWN, "jail: hand the VM's files and device nodes to its uid"},
		{"CAP_FOWNER", unix.CAP_FOWNER, "jail: hard-link files the agent does not own into a chroot, chmod files a VMM owns"},
		{"CAP_DAC_OVERRIDE", unix.CAP_DAC_OVERRIDE, "jail: read logs and remove chroots that belong to a VMM's uid"},
		{"CAP_KILL", unix.CAP_KILL, "jail: stop VMMs that run as other uids"},
	}
)

// Capabilities lists what the agent needs: networking always, and the
// jail's set in jail mode. (NAT through the iptables fallback also needs
// CAP_NET_RAW; an AGENT_BIND port below 1024 needs CAP_NET_BIND_SERVICE.)
func Capabilities(jailed bool) []Capability {
	out := append([]Capability(nil), baseCaps...)
	if jailed {
		out = append(out, jailCaps...)
	}
	return out
}

// missingCapabilities returns the capabilities of need that this process's
// effective set lacks.
func missingCapabilities(need []Capability) ([]Capability, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	var eff uint64
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			if eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				return nil, fmt.Errorf("parse CapEff %q: %w", v, err)
			}
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("no CapEff in /proc/self/status")
	}
	var out []Capability
	for _, c := range need {
		if eff&(1<<uint(c.Bit)) == 0 {
			out = append(out, c)
		}
	}
	return out, nil
}

func describeCaps(cs []Capability) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.Name + " (" + c.Why + ")"
	}
	return strings.Join(parts, ", ")
}
