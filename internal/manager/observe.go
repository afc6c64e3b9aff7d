package manager

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/agentapi"
)

// StreamLogsFrom opens a Server-Sent Events stream of a VM's log on its
// host, starting where o says (a tail, or after the last event a client
// saw, so a reconnecting client misses and repeats nothing).
func (s *VMs) StreamLogsFrom(ctx context.Context, scope Scope, id string, o agentapi.StreamOptions) (*http.Response, error) {
	vm, err := s.GetVM(ctx, scope, id)
	if err != nil {
		return nil, err
	}
	if o.Source != "" && o.Source != "fc" && o.Source != "console" {
		return nil, invalid("source must be fc or console, not %q", o.Source)
	}
	if vm.HostAddr == "" {
		return nil, conflict("vm_not_placed", "vm %s has no host yet", id)
	}
	resp, err := s.agentFor(ctx, vm).StreamLogsFrom(ctx, id, o)
	if err != nil {
		return nil, agentError("vm "+id+": stream logs", vm, err)
	}
	return resp, nil
}

// VMStats returns a VM's current metric values as its agent exports them;
// a VM without a live VMM has none.
func (s *VMs) VMStats(ctx context.Context, scope Scope, id string) (agentapi.VMStats, error) {
	vm, err := s.GetVM(ctx, scope, id)
	if err != nil {
		return agentapi.VMStats{}, err
	}
	if vm.HostAddr == "" {
		return agentapi.VMStats{Samples: []agentapi.Sample{}}, nil
	}
	st, err := s.agentFor(ctx, vm).Stats(ctx, id)
	if isAgentStatus(err, http.StatusNotFound) {
		return agentapi.VMStats{Samples: []agentapi.Sample{}}, nil
	}
	if err != nil {
		return st, agentError("vm "+id+": stats", vm, err)
	}
	return st, nil
}
