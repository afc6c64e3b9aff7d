package network

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
)

// The iptables fallback, for kernels without nf_tables. It is the only place
// the package runs a program. Every rule carries the comment
// "nexus:<bridge>" so we can find (and remove) ours among everyone else's,
// including another agent's on another bridge.
func (n *Network) iptComment() string { return "nexus:" + n.cfg.Bridge }

// legacyIptComment is what Nexus versions before ownership marks wrote on
// every agent's rules; such a rule is ours only if it names our bridge or
// masquerades our subnet.
const legacyIptComment = "nexus"

// iptRule is one rule in `iptables -S` form without the leading "-A CHAIN".
type iptRule struct {
	table, chain string
	args         []string
}

// spec is the rule as `iptables -S` prints it, used to spot stale rules.
func (r iptRule) spec() string { return "-A " + r.chain + " " + strings.Join(r.args, " ") }

// iptRules mirrors nftRules. Options are in the order `iptables -S` prints
// them, so a listed rule compares equal to the one we would add.
func (r natRules) iptRules(commentText string) []iptRule {
	comment := []string{"-m", "comment", "--comment", commentText}
	return []iptRule{
		{"nat", "POSTROUTING", slices.Concat([]string{"-s", r.subnet.String(), "-o", r.uplink}, comment, []string{"-j", "MASQUERADE"})},
		{"filter", "FORWARD", slices.Concat([]string{"-i", r.bridge, "-o", r.uplink}, comment, []string{"-j", "ACCEPT"})},
		{"filter", "FORWARD", slices.Concat([]string{"-i", r.uplink, "-o", r.bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"},
			comment, []string{"-j", "ACCEPT"})},
	}
}

// iptChains are the chains our rules live in.
var iptChains = [][2]string{{"nat", "POSTROUTING"}, {"filter", "FORWARD"}}

func (n *Network) iptablesPresent() bool {
	_, err := exec.LookPath(n.cfg.IptablesPath)
	return err == nil
}

// iptables runs the binary in our namespace; -w waits for the xtables lock
// instead of failing when another program holds it.
func (n *Network) iptables(ctx context.Context, args ...string) (string, error) {
	var out []byte
	err := n.inNS(func() error {
		var err error
		out, err = exec.CommandContext(ctx, n.cfg.IptablesPath, append([]string{"-w"}, args...)...).CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", n.cfg.IptablesPath, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// installIptables removes our rules that no longer match the configuration
// (an uplink that moved), then adds each wanted rule unless `-C` finds it:
// re-running never duplicates.
func (n *Network) installIptables(ctx context.Context, r natRules) error {
	want := r.iptRules(n.iptComment())
	var wantSpecs []string
	for _, w := range want {
		wantSpecs = append(wantSpecs, w.spec())
	}
	if _, err := n.deleteIptables(ctx, func(spec string) bool { return !slices.Contains(wantSpecs, spec) }); err != nil {
		return err
	}
	for _, w := range want {
		check := append([]string{"-t", w.table, "-C", w.chain}, w.args...)
		if _, err := n.iptables(ctx, check...); err == nil {
			continue
		} else if ctx.Err() != nil {
			return err
		}
		// -C fails with status 1 when the rule is missing; any other
		// failure shows up again, with its message, in -A.
		add := append([]string{"-t", w.table, "-A", w.chain}, w.args...)
		if _, err := n.iptables(ctx, add...); err != nil {
			return err
		}
		n.log.Info("added iptables rule", "table", w.table, "rule", w.spec())
	}
	return nil
}

// removeIptables deletes every rule carrying our comment.
func (n *Network) removeIptables(ctx context.Context) (int, error) {
	return n.deleteIptables(ctx, func(string) bool { return true })
}

// deleteIptables deletes our rules (by comment) for which drop is true.
func (n *Network) deleteIptables(ctx context.Context, drop func(spec string) bool) (int, error) {
	var errs []error
	deleted := 0
	subnet := n.bridgeSubnet()
	for _, tc := range iptChains {
		table, chain := tc[0], tc[1]
		out, err := n.iptables(ctx, "-t", table, "-S", chain)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			spec := strings.TrimSpace(sc.Text())
			fields := strings.Fields(spec)
			if len(fields) < 3 || fields[0] != "-A" || fields[1] != chain || !n.isOurRule(fields, subnet) || !drop(spec) {
				continue
			}
			// Our rules contain no quoted or spaced words, so the listed
			// fields are exactly the arguments -D needs.
			del := append([]string{"-t", table, "-D", chain}, fields[2:]...)
			if _, err := n.iptables(ctx, del...); err != nil {
				errs = append(errs, err)
				continue
			}
			n.log.Info("deleted iptables rule", "table", table, "rule", spec)
			deleted++
		}
	}
	return deleted, errors.Join(errs...)
}

// isOurRule: the rule carries our comment, or the legacy one and names our
// bridge (-i/-o) or our subnet (-s).
func (n *Network) isOurRule(fields []string, subnet netip.Prefix) bool {
	comment := ""
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "--comment" {
			comment = strings.Trim(fields[i+1], `"`)
		}
	}
	switch comment {
	case n.iptComment():
		return true
	case legacyIptComment:
		for i := 0; i+1 < len(fields); i++ {
			switch fields[i] {
			case "-i", "-o":
				if fields[i+1] == n.cfg.Bridge {
					return true
				}
			case "-s":
				if subnet.IsValid() && fields[i+1] == subnet.String() {
					return true
				}
			}
		}
	}
	return false
}
