package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/nexus-microvm/nexus/internal/auth"
)

// routes lists every route of the manager API in one place, each with its
// policy: who may call it and, for mutations, the audited action.
func (s *Server) routes() {

	// Health and readiness.
	register(s, "healthz", http.MethodGet, "/healthz", "Liveness", public, s.healthz)
	register(s, "readyz", http.MethodGet, "/readyz", "Readiness: store reachable and at least one ready host", public, s.readyz)

	// VMs.
	register(s, "create-vm", http.MethodPost, "/v1/vms", "Create a VM (boots it unless start is false)", creates(op("vm.create", "vm")), s.createVM, http.StatusCreated)
	register(s, "list-vms", http.MethodGet, "/v1/vms", "List VMs", viewer, s.listVMs)
	register(s, "bulk-vms", http.MethodPost, "/v1/vms/bulk", "Start, stop or delete many VMs", op("vm.bulk", "vm"), s.bulkVMs)
	register(s, "get-vm", http.MethodGet, "/v1/vms/{id}", "Get a VM", viewer, s.getVM)
	register(s, "start-vm", http.MethodPost, "/v1/vms/{id}/start", "Start a stopped VM", op("vm.start", "vm"), s.startVM)
	register(s, "stop-vm", http.MethodPost, "/v1/vms/{id}/stop", "Stop a VM", op("vm.stop", "vm"), s.stopVM)
	register(s, "pause-vm", http.MethodPost, "/v1/vms/{id}/pause", "Pause a running VM", op("vm.pause", "vm"), s.pauseVM)
	register(s, "resume-vm", http.MethodPost, "/v1/vms/{id}/resume", "Resume a paused VM", op("vm.resume", "vm"), s.resumeVM)
	register(s, "extend-vm-ttl", http.MethodPost, "/v1/vms/{id}/ttl", "Set a VM to expire a time to live from now (stop or delete, per on_expiry)", op("vm.ttl", "vm"), s.extendTTL)
	register(s, "delete-vm", http.MethodDelete, "/v1/vms/{id}", "Delete a VM and everything it has on its host", op("vm.delete", "vm"), s.deleteVM)
	register(s, "patch-drive", http.MethodPatch, "/v1/vms/{id}/drives/{drive_id}", "Change a running VM's drive rate limiter", op("vm.patch_drive", "vm"), s.patchDrive)
	register(s, "vm-events", http.MethodGet, "/v1/vms/{id}/events", "A VM's history", viewer, s.vmEvents)

	// Logs and metrics.
	register(s, "vm-logs", http.MethodGet, "/v1/vms/{id}/logs", "The last lines of a VM's firecracker log or console", viewer, s.vmLogs)
	registerStream(s, "vm-logs-stream", "/v1/vms/{id}/logs/stream", "Follow a VM's log (Server-Sent Events, one event per line)", viewer, s.vmLogsStream)
	register(s, "tail-path", http.MethodGet, "/v1/logs/tail", "The last lines of a file in a VM run dir (dev mode)", viewer, s.tailPath)
	register(s, "metrics-recent", http.MethodGet, "/v1/metrics/recent", "A VM's latest firecracker metrics record", viewer, s.metricsRecent)

	// Hosts.
	register(s, "list-hosts", http.MethodGet, "/v1/hosts", "List the fleet's hosts", viewer, s.listHosts)
	register(s, "register-host", http.MethodPost, "/v1/hosts/register", "An agent joins the fleet (join token)", join("host.register"), s.registerHost)
	heartbeat := join("host.heartbeat")
	heartbeat.NoAudit = "every agent reports every few seconds; registration is audited"
	register(s, "host-heartbeat", http.MethodPost, "/v1/hosts/{id}/heartbeat", "An agent reports capacity and allocation (join token)", heartbeat, s.hostHeartbeat)

	events := join("host.event")
	events.NoAudit = "agents report VMM exits and guest readiness as they happen; what follows is in the VM's events"
	register(s, "host-event", http.MethodPost, "/v1/hosts/{id}/events", "An agent reports a VMM exit or what a guest said on its console (join token)", events, s.hostEvent)
	register(s, "drain-host", http.MethodPost, "/v1/hosts/{id}/drain", "Stop placing new VMs on a host", admin("host.drain", "host"), s.drainHost)
	register(s, "undrain-host", http.MethodPost, "/v1/hosts/{id}/undrain", "Place new VMs on a host again", admin("host.undrain", "host"), s.undrainHost)
	register(s, "remove-host", http.MethodDelete, "/v1/hosts/{id}", "Forget a host that holds no VMs (a registering agent comes back)", admin("host.remove", "host"), s.removeHost)
	register(s, "reconciler", http.MethodGet, "/v1/reconciler", "Whether this manager reconciles, and its last pass", viewer, s.reconcilerStatus)

	// Tokens (admin).
	register(s, "create-token", http.MethodPost, "/v1/tokens", "Create an API token (the secret is shown once)", creates(projectAdmin(admin("token.create", "token"))), s.createToken, http.StatusCreated)
	register(s, "list-tokens", http.MethodGet, "/v1/tokens", "List tokens (never secrets)", policy{Role: auth.RoleAdmin, ProjectAdmin: true}, s.listTokens)
	register(s, "revoke-token", http.MethodDelete, "/v1/tokens/{id}", "Revoke a token, effective at once", projectAdmin(admin("token.revoke", "token")), s.revokeToken)
	register(s, "rotate-token", http.MethodPost, "/v1/tokens/{id}/rotate", "Give a token a new secret; the old one stops working", projectAdmin(admin("token.rotate", "token")), s.rotateToken)

	// Images, templates and snapshots live in their own files.
	s.imageRoutes()
	s.templateRoutes()
	s.snapshotRoutes()
	s.poolRoutes()
	s.groupRoutes()
	s.observeRoutes()
	s.quotaRoutes()

	// Audit.
	register(s, "list-audit", http.MethodGet, "/v1/audit", "The audit trail, oldest first (admins: all; others: one VM's history)", viewer, s.listAudit)
}

// plainRoutes are the routes served outside huma (no operation of their
// own), each with its policy. The route walk (observe_test.go) fails on a
// route that is neither an operation nor listed here. All are public and
// read-only, and none returns a resource: /metrics has counts only (by
// state, host and project name), like /healthz it is for the operators'
// network.
var plainRoutes = map[string]policy{
	"/metrics": public, // Prometheus: fleet-wide counts (mounted in New)
	"/":        public, // redirects to the console (ui.go)
	"/ui":      public, // redirects to /ui/
	"/ui/*":    public, // the console's static files (package web); its data comes from the API with the user's token
	// The API's own description (huma).
	"/openapi.json": public, "/openapi.yaml": public, "/openapi-3.0.json": public, "/openapi-3.0.yaml": public,
	"/schemas/{schema}": public,
}

// register adds one operation with its policy.
func register[I, O any](s *Server, id, method, path, summary string, pol policy, h func(context.Context, *I) (*O, error), status ...int) {
	op := huma.Operation{
		OperationID: id, Method: method, Path: path, Summary: summary,
		Metadata: map[string]any{policyKey: pol},
	}
	if len(status) > 0 {
		op.DefaultStatus = status[0]
	}
	huma.Register(s.api, op, func(ctx context.Context, in *I) (*O, error) {
		out, err := h(ctx, in)
		if err != nil {
			return nil, s.toAPIError(ctx, err)
		}
		return out, nil
	})
	s.documentErrors(method, path, pol)
	s.ops = append(s.ops, &op)
}

// registerStream adds a streaming GET operation whose answer is
// Server-Sent Events, and says so in the OpenAPI document.
func registerStream[I any](s *Server, id, path, summary string, pol policy, h func(context.Context, *I) (*huma.StreamResponse, error)) {
	register(s, id, http.MethodGet, path, summary, pol, h)
	pi := s.api.OpenAPI().Paths[path]
	if pi == nil || pi.Get == nil {
		panic("stream " + id + " is not in the OpenAPI document")
	}
	op := pi.Get // huma keeps its own copy of the operation
	if op.Responses == nil {
		op.Responses = map[string]*huma.Response{}
	}
	op.Responses["200"] = &huma.Response{
		Description: "Server-Sent Events: `id:` (resume with Last-Event-ID), `event:` (the source), `data:` (one line); a `:` comment every 15 s keeps idle connections open",
		Content:     map[string]*huma.MediaType{"text/event-stream": {Schema: &huma.Schema{Type: "string"}}},
	}
}
