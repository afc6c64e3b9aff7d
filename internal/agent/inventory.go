package agent

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

func (a *Agent) inventory(w http.ResponseWriter, r *http.Request) {
	inv, err := a.Inventory(r)
	if err != nil {
		a.fail(w, r, apierr.Internal(err))
		return
	}
	writeJSON(w, http.StatusOK, inv)
}

// Inventory lists live VMMs, the TAPs that carry this agent's mark, API
// sockets and run dirs, each tagged with its VM id.
func (a *Agent) Inventory(r *http.Request) (agentapi.Inventory, error) {
	inv := agentapi.Inventory{
		Host: a.cfg.Name, At: time.Now().UTC(),
		VMMs: []agentapi.VMM{}, Taps: []agentapi.Tap{}, Sockets: []agentapi.Socket{}, RunDirs: []agentapi.RunDir{},
	}
	live := map[string]bool{}
	for _, h := range a.sup.List() {
		live[h.VMID] = true
		inv.VMMs = append(inv.VMMs, agentapi.VMM{
			VMID: h.VMID, PID: h.PID, APISock: h.APISock, StartedAt: h.StartedAt, Vcpu: h.Vcpu, MemMib: h.MemMib,
		})
	}
	l := a.cfg.Layout
	entries, err := os.ReadDir(l.VMsDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return inv, fmt.Errorf("inventory: %w", err)
	}
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !hostlayout.ValidVMID(id) {
			continue
		}
		inv.RunDirs = append(inv.RunDirs, agentapi.RunDir{VMID: id, Path: l.VMDir(id)})
		if fi, err := os.Lstat(l.SockPath(id)); err == nil && fi.Mode()&os.ModeSocket != 0 {
			inv.Sockets = append(inv.Sockets, agentapi.Socket{VMID: id, Path: l.SockPath(id), Live: live[id]})
		}
	}
	taps, err := a.net.ListTaps(r.Context(), hostlayout.TapPrefix)
	if err != nil {
		return inv, fmt.Errorf("inventory: %w", err)
	}
	for _, t := range taps {
		// Only TAPs with our mark are ours to report (and so to clean up):
		// a tap-… link of another agent or program is none of our business.
		if !t.Ours {
			continue
		}
		inv.Taps = append(inv.Taps, agentapi.Tap{Name: t.Name, VMID: t.VMID, Attached: t.Attached, Up: t.Up})
	}
	if iso, ok := a.net.(Isolator); ok {
		// Isolated VMs: the TAP inside each namespace of a run dir, and
		// the host sides of the veths with our mark.
		for _, d := range inv.RunDirs {
			if t, ok := iso.IsolatedTap(l.NetNSPath(d.VMID), hostlayout.TapName(d.VMID), d.VMID); ok {
				inv.Taps = append(inv.Taps, agentapi.Tap{Name: t.Name, VMID: d.VMID, Attached: true, Up: t.Up, Kind: "isolated"})
			}
		}
		veths, err := iso.ListVeths(r.Context())
		if err != nil {
			return inv, fmt.Errorf("inventory: %w", err)
		}
		for _, v := range veths {
			inv.Taps = append(inv.Taps, agentapi.Tap{Name: v.Name, VMID: v.VMID, Attached: v.Attached, Up: v.Up, Kind: "veth"})
		}
	}
	sort.Slice(inv.Taps, func(i, j int) bool { return inv.Taps[i].Name < inv.Taps[j].Name })
	return inv, nil
}
