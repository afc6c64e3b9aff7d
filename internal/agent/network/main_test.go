package network

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
)

// fakeIptablesEnv, when set to a state file, turns the test binary into a
// minimal iptables (see fakeIptables): the fallback is exercised without an
// iptables binary on the machine.
const fakeIptablesEnv = "NEXUS_TEST_FAKE_IPTABLES_STATE"

func TestMain(m *testing.M) {
	if state := os.Getenv(fakeIptablesEnv); state != "" {
		os.Exit(fakeIptables(state, os.Args[1:]))
	}
	// Every test works in a throwaway namespace; prove the host's own
	// namespace came out as it went in.
	before, ok := rootSnapshot()
	code := m.Run()
	if ok {
		if after, _ := rootSnapshot(); !after.equal(before) {
			fmt.Fprintf(os.Stderr, "FAIL: the tests changed the root network namespace:\nbefore: %+v\nafter:  %+v\n", before, after)
			code = 1
		}
	}
	os.Exit(code)
}

// hostState is what our tests could conceivably leak into the root
// namespace: links of the kinds we create, our nft table, ip_forward.
type hostState struct {
	Links      []string
	NexusTable bool
	IPForward  string
}

func (s hostState) equal(o hostState) bool {
	return slices.Equal(s.Links, o.Links) && s.NexusTable == o.NexusTable && s.IPForward == o.IPForward
}

func rootSnapshot() (hostState, bool) {
	if os.Geteuid() != 0 {
		return hostState{}, false
	}
	var s hostState
	links, err := netlink.LinkList()
	if err != nil {
		return s, false
	}
	for _, l := range links {
		name := l.Attrs().Name
		if strings.HasPrefix(name, "tap-") || strings.HasPrefix(name, "uplink") || name == "fcbr0" || name == "nxbr-other" {
			s.Links = append(s.Links, name)
		}
	}
	slices.Sort(s.Links)
	if c, err := nftables.New(); err == nil {
		if ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
			s.NexusTable = slices.ContainsFunc(ts, func(t *nftables.Table) bool { return strings.HasPrefix(t.Name, "nexus") })
		}
	}
	b, _ := os.ReadFile(ipForwardPath)
	s.IPForward = strings.TrimSpace(string(b))
	return s, true
}

// fakeIptables keeps rules per "table/chain" in a JSON file and supports
// what the fallback uses: -w, -t, -S, -C, -A, -D. It prints rules the way
// `iptables -S` does ("-A CHAIN args…") and logs each call to state+".log".
func fakeIptables(state string, args []string) int {
	logf, err := os.OpenFile(state+".log", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err == nil {
		fmt.Fprintln(logf, strings.Join(args, " "))
		logf.Close()
	}
	rules := map[string][]string{}
	if b, err := os.ReadFile(state); err == nil {
		if err := json.Unmarshal(b, &rules); err != nil {
			fmt.Fprintln(os.Stderr, "fake iptables: bad state:", err)
			return 4
		}
	}
	table := "filter"
	for len(args) > 0 && (args[0] == "-w" || args[0] == "-t") {
		if args[0] == "-t" && len(args) > 1 {
			table, args = args[1], args[2:]
			continue
		}
		args = args[1:]
	}
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "fake iptables: want -S|-C|-A|-D CHAIN")
		return 2
	}
	op, chain, rest := args[0], args[1], args[2:]
	key := table + "/" + chain
	spec := strings.TrimSpace("-A " + chain + " " + strings.Join(rest, " "))
	switch op {
	case "-S":
		fmt.Printf("-P %s ACCEPT\n", chain)
		for _, r := range rules[key] {
			fmt.Println(r)
		}
		return 0
	case "-C":
		if slices.Contains(rules[key], spec) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "iptables: Bad rule (does a matching rule exist in that chain?).")
		return 1
	case "-A":
		rules[key] = append(rules[key], spec)
	case "-D":
		i := slices.Index(rules[key], spec)
		if i < 0 {
			fmt.Fprintln(os.Stderr, "iptables: Bad rule (does a matching rule exist in that chain?).")
			return 1
		}
		rules[key] = slices.Delete(rules[key], i, i+1)
	default:
		fmt.Fprintln(os.Stderr, "fake iptables: unsupported", op)
		return 2
	}
	b, _ := json.Marshal(rules)
	if err := os.WriteFile(state, b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "fake iptables:", err)
		return 4
	}
	return 0
}
