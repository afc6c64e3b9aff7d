package manager

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/store"
)

// Logs returns the last lines of a VM's firecracker log or guest console,
// read on the VM's host.
func (s *VMs) Logs(ctx context.Context, scope Scope, id, source string, tail int) (agentapi.LogLines, error) {
	vm, err := s.GetVM(ctx, scope, id)
	if err != nil {
		return agentapi.LogLines{}, err
	}
	if source != "" && source != "fc" && source != "console" {
		return agentapi.LogLines{}, invalid("source must be fc or console, not %q", source)
	}
	if vm.HostAddr == "" {
		return agentapi.LogLines{Source: source, Lines: []string{}}, nil
	}
	ll, err := s.agentFor(ctx, vm).Logs(ctx, id, source, tail)
	if isAgentStatus(err, http.StatusNotFound) {
		// Never booted on its host (created stopped): no log yet.
		return agentapi.LogLines{Source: source, Lines: []string{}}, nil
	}
	if err != nil {
		return ll, agentError("vm "+id+": logs", vm, err)
	}
	return ll, nil
}

// StreamLogs opens a Server-Sent Events stream of a VM's log on its host.
func (s *VMs) StreamLogs(ctx context.Context, scope Scope, id, source string) (*http.Response, error) {
	return s.StreamLogsFrom(ctx, scope, id, agentapi.StreamOptions{Source: source})
}

// isAgentStatus reports whether err is an agent's answer with status.
func isAgentStatus(err error, status int) bool {
	var ae *apierr.Error
	return errors.As(err, &ae) && ae.Status == status
}

// Metrics returns the latest firecracker metrics record of a VM.
func (s *VMs) Metrics(ctx context.Context, scope Scope, id string) (agentapi.MetricsRecord, error) {
	vm, err := s.GetVM(ctx, scope, id)
	if err != nil {
		return agentapi.MetricsRecord{}, err
	}
	if vm.HostAddr == "" {
		return agentapi.MetricsRecord{}, nil
	}
	rec, err := s.agentFor(ctx, vm).Metrics(ctx, id)
	if isAgentStatus(err, http.StatusNotFound) {
		return agentapi.MetricsRecord{}, nil
	}
	if err != nil {
		return rec, agentError("vm "+id+": metrics", vm, err)
	}
	return rec, nil
}

// TailPath returns the last lines of a file under the VM run dirs (dev
// mode only). The path must belong to a VM the scope can see; the agent
// checks it again after resolving symlinks.
func (s *VMs) TailPath(ctx context.Context, scope Scope, path string, tail int) (agentapi.LogLines, error) {
	if s.cfg.Mode != ModeDev {
		return agentapi.LogLines{}, newErr(KindForbidden, "dev_only", "GET /v1/logs/tail is available in dev mode only").
			suggest("use GET /v1/vms/{id}/logs")
	}
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return agentapi.LogLines{}, invalid("path must be absolute and clean")
	}
	// Find the VM whose run dir holds path: …/vms/<id>/….
	var vm store.VM
	found := false
	for dir := filepath.Dir(path); dir != "/" && dir != "."; dir = filepath.Dir(dir) {
		if filepath.Base(filepath.Dir(dir)) == "vms" {
			v, err := s.GetVM(ctx, scope, filepath.Base(dir))
			if err == nil {
				vm, found = v, true
			}
			break
		}
	}
	if !found {
		return agentapi.LogLines{}, newErr(KindForbidden, "path_not_allowed", "path %q is not under a VM run dir you can see", path)
	}
	ll, err := s.agentFor(ctx, vm).TailFile(ctx, path, tail)
	if err != nil {
		return ll, agentError("tail "+path, vm, err)
	}
	return ll, nil
}
