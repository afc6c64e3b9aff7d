package api

import (
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/nexus-microvm/nexus/internal/apierr"
)

// The OpenAPI document is the contract: every operation lists the error
// statuses it can answer, each with the one error body the server really
// sends (apierr.Error, schema "Error"), and how the caller authenticates.
// The statuses come from the operation's policy and inputs, plus what its
// service can refuse (policy.Errors); the e2e suite checks every error
// response it sees against this document.

// errorText says, per status, what the answer means and which codes it
// carries; the document shows it as the response's description.
var errorText = map[int]string{
	http.StatusBadRequest:          "Bad input: a body, path or query value out of its schema or limits (error: invalid_request, or a more specific code); nothing changed",
	http.StatusUnauthorized:        "No token, or an invalid, revoked or rotated one (error: unauthorized)",
	http.StatusForbidden:           "The token's role or project may not do this, or dev-only input in prod (error: forbidden, raw_path_refused, path_not_allowed …)",
	http.StatusNotFound:            "No such resource, or one this token may not see (error: not_found)",
	http.StatusConflict:            "The resource's state or a name in use forbids this (error: name_taken, vm_paused, vm_not_running, image_in_use, host_not_empty …)",
	http.StatusTooManyRequests:     "Too many calls or streams: this token's rate limit for the call's class, its source's calls without a valid token, or a stream cap; retry after the Retry-After header's seconds (error: rate_limited, too_many_streams)",
	http.StatusInternalServerError: "A fault of the server; the log has the cause under request_id (error: internal)",
	http.StatusBadGateway:          "The VM's host or firecracker failed; fault_message and log_tail carry their words (error: agent_unavailable, firecracker_error …)",
	http.StatusServiceUnavailable:  "No host can take the VM now, or the manager is not ready (error: no_capacity, no_hosts, host_full, host_not_ready, not_ready)",
	http.StatusGatewayTimeout:      "The VM's host did not finish in time; the operation may still complete (error: timeout)",
}

// Document is the API's OpenAPI document, from a server with nothing
// behind it: `nexus manager openapi` prints it without a database.
func Document(version string) *huma.OpenAPI {
	return New(Deps{Version: version, Log: slog.New(slog.DiscardHandler)}).OpenAPI()
}

// What each operation's service can refuse besides what every operation
// of its kind can (errorStatuses): state conflicts and names in use (409),
// the host or firecracker failing (502) or slow (504), no capacity (503),
// too many streams (429). A test checks every key is an operation.
var (
	onHost      = []int{http.StatusConflict, http.StatusBadGateway, http.StatusGatewayTimeout}
	placesVMs   = []int{http.StatusConflict, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}
	serviceErrs = map[string][]int{
		"readyz":               {http.StatusServiceUnavailable},
		"create-vm":            append(slices.Clone(placesVMs), http.StatusNotFound), // an image it names
		"start-vm":             placesVMs,
		"stop-vm":              onHost,
		"pause-vm":             onHost,
		"resume-vm":            onHost,
		"delete-vm":            onHost,
		"extend-vm-ttl":        {http.StatusConflict},
		"patch-drive":          onHost,
		"vm-logs":              onHost,
		"vm-logs-stream":       append(slices.Clone(onHost), http.StatusTooManyRequests),
		"tail-path":            onHost,
		"metrics-recent":       onHost,
		"vm-stats":             onHost,
		"register-host":        {http.StatusConflict},
		"remove-host":          {http.StatusConflict},
		"rotate-token":         {http.StatusConflict},
		"create-image":         onHost,
		"delete-image":         {http.StatusConflict},
		"create-template":      {http.StatusConflict, http.StatusNotFound}, // an image it names
		"list-audit":           {http.StatusNotFound},                      // the VM of vm_id
		"instantiate-template": placesVMs,
		// Group rollouts (groups.go): one under way, or a state that does
		// not allow the action.
		"start-group-rollout":   {http.StatusConflict},
		"pause-group-rollout":   {http.StatusConflict},
		"resume-group-rollout":  {http.StatusConflict},
		"promote-group-rollout": {http.StatusConflict},
		"abort-group-rollout":   {http.StatusConflict},
		"create-snapshot":       onHost,
		"delete-snapshot":       onHost,
		"instantiate-snapshot":  placesVMs,
		"create-pool":           {http.StatusConflict, http.StatusNotFound}, // the template or snapshot it names
		"delete-pool":           onHost,
		"claim-pool":            placesVMs,
		"start-rollout":         {http.StatusConflict}, // one under way; the version is a 404
		"pause-rollout":         {http.StatusConflict}, // not in a state that allows it
		"resume-rollout":        {http.StatusConflict},
		"promote-rollout":       {http.StatusConflict},
		"abort-rollout":         {http.StatusConflict},
	}
)

// errorStatuses lists the error statuses of an operation: 400 when it
// takes input, 401/403 from authentication and roles, 429 from rate limits, 404 for a resource
// in its path, 500 always, and its service's own (serviceErrs).
func errorStatuses(op *huma.Operation, pol policy) []int {
	st := []int{http.StatusInternalServerError}
	if len(op.Parameters) > 0 || op.RequestBody != nil {
		st = append(st, http.StatusBadRequest)
	}
	// 429: rate limits per token and per source (ratelimit.go).
	switch pol.Auth {
	case authToken:
		st = append(st, http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests)
	case authJoin:
		st = append(st, http.StatusUnauthorized, http.StatusTooManyRequests)
	}
	if strings.Contains(op.Path, "{") {
		st = append(st, http.StatusNotFound)
	}
	st = append(st, serviceErrs[op.OperationID]...)
	slices.Sort(st)
	return slices.Compact(st)
}

// documentErrors writes an operation's error responses into the document
// (huma keeps its own copy of each operation) and its security: bearer API
// token, the fleet's join token, or none.
func (s *Server) documentErrors(method, path string, pol policy) {
	op := operationOf(s.api.OpenAPI().Paths[path], method)
	if op == nil {
		panic("operation " + method + " " + path + " is not in the OpenAPI document")
	}
	errSchema := s.api.OpenAPI().Components.Schemas.Schema(reflect.TypeFor[apierr.Error](), true, "Error")
	body := func(desc string) *huma.Response {
		return &huma.Response{Description: desc, Content: map[string]*huma.MediaType{"application/json": {Schema: errSchema}}}
	}
	// huma's own guesses (a 422 the server never sends: validation is 400).
	delete(op.Responses, strconv.Itoa(http.StatusUnprocessableEntity))
	for _, st := range errorStatuses(op, pol) {
		r := body(errorText[st])
		if st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable {
			r.Headers = map[string]*huma.Param{"Retry-After": {
				Description: "seconds to wait before retrying", Schema: &huma.Schema{Type: "integer"},
			}}
		}
		op.Responses[strconv.Itoa(st)] = r
	}
	// Any other status (413 for an oversized body, 405 …) has the same body.
	op.Responses["default"] = body("Any other error, with the same body")
	switch pol.Auth {
	case authToken:
		op.Security = []map[string][]string{{"bearer": {}}}
	case authJoin:
		op.Security = []map[string][]string{{"joinToken": {}}}
	default:
		op.Security = []map[string][]string{} // explicitly open: no credentials
	}
}

func operationOf(pi *huma.PathItem, method string) *huma.Operation {
	if pi == nil {
		return nil
	}
	switch method {
	case http.MethodGet:
		return pi.Get
	case http.MethodPost:
		return pi.Post
	case http.MethodPut:
		return pi.Put
	case http.MethodPatch:
		return pi.Patch
	case http.MethodDelete:
		return pi.Delete
	}
	return nil
}
