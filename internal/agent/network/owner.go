package network

import (
	"errors"
	"fmt"
	"strings"
)

// Ownership marks. Every link the agent creates carries an interface alias
// (IFLA_IFALIAS, what `ip link show` prints as "alias") naming the agent
// instance that made it:
//
//	bridge   nexus/<owner>/bridge
//	TAP      nexus/<owner>/vm/<vm-id>
//	veth     nexus/<owner>/veth/<vm-id>   (host side of an isolated VM's pair)
//
// The owner is the agent's instance id (Config.Owner), so two agents on one
// host — two `nexus up` in different data dirs, say — each see only their
// own links. A link without our mark is never modified or deleted, whatever
// its name. NAT objects are named after the bridge instead (nft table
// "ip nexus-<bridge>", iptables comment "nexus:<bridge>"): a bridge belongs
// to one agent, so the name is as unique as the mark.
const markPrefix = "nexus/"

// ErrNotOurs: the link exists but carries no mark of this agent. It is
// left alone.
var ErrNotOurs = errors.New("link is not owned by this agent")

// validOwner keeps marks parseable: 1-64 letters, digits, '-' or '_'.
func validOwner(s string) error {
	if s == "" || len(s) > 64 {
		return errors.New("want 1-64 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("invalid character %q (want letters, digits, '-' or '_')", r)
		}
	}
	return nil
}

func (n *Network) bridgeMark() string { return markPrefix + n.cfg.Owner + "/bridge" }

func (n *Network) tapMark(vmID string) string { return markPrefix + n.cfg.Owner + "/vm/" + vmID }

// mark is a parsed ownership alias.
type mark struct {
	owner string
	kind  string // "bridge", "vm" or "veth"
	vmID  string
}

// parseMark reads an alias; ok is false for aliases that are not ours in
// form (another program's, or none).
func parseMark(alias string) (mark, bool) {
	rest, ok := strings.CutPrefix(alias, markPrefix)
	if !ok {
		return mark{}, false
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 2 && parts[1] == "bridge" && validOwner(parts[0]) == nil:
		return mark{owner: parts[0], kind: "bridge"}, true
	case len(parts) == 3 && (parts[1] == "vm" || parts[1] == "veth") && validOwner(parts[0]) == nil && parts[2] != "":
		return mark{owner: parts[0], kind: parts[1], vmID: parts[2]}, true
	}
	return mark{}, false
}

// describeOwner says whose a link is, for error messages.
func describeOwner(alias string) string {
	if m, ok := parseMark(alias); ok {
		return "another Nexus agent (instance " + m.owner + ")"
	}
	if alias != "" {
		return fmt.Sprintf("another program (alias %q)", alias)
	}
	return "another program (no Nexus mark)"
}
