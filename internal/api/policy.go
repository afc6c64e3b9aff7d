package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"regexp"
	"strings"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humachi"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/pki"
)

// Authenticator turns a bearer token into a principal (auth.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (auth.Principal, error)
}

// Who may call an operation. Every operation carries one; the middleware
// refuses operations without it, so a new route cannot forget its policy.
type policy struct {
	// Auth is how the caller proves who it is: an API token (default),
	// the fleet's join token (agents), or nothing (health, docs).
	Auth authKind
	// Role is the weakest role allowed.
	Role auth.Role
	// Action names the operation in the audit trail ("vm.create"); set on
	// every mutating operation.
	Action string
	// Resource is what the action acts on ("vm", "host", …).
	Resource string
	// Creates marks an operation that makes a new resource: its id is
	// chosen before the call (newID) so the audit row carries it.
	Creates bool
	// NoAudit exempts a mutating call from the audit trail; only for
	// machine chatter (agent heartbeats), and it must say why.
	NoAudit string
	// ProjectAdmin lets an admin token of one project call an admin
	// operation, within that project (its handler keeps it there); every
	// other admin operation needs an admin of every project ("*").
	ProjectAdmin bool
}

// Policy constructors for routes.go and the per-resource route files.
var (
	viewer = policy{Role: auth.RoleViewer}
	public = policy{Auth: authNone}
)

// op is a mutation an operator of the resource's project may make.
func op(action, resource string) policy {
	return policy{Role: auth.RoleOperator, Action: action, Resource: resource}
}

// admin is a mutation only an admin may make.
func admin(action, resource string) policy {
	return policy{Role: auth.RoleAdmin, Action: action, Resource: resource}
}

// join is an agent's call, authenticated by the fleet's join token.
func join(action string) policy { return policy{Auth: authJoin, Action: action, Resource: "host"} }

// creates marks an operation that makes a new resource (see Creates).
func creates(p policy) policy { p.Creates = true; return p }

// projectAdmin lets a project's admins call p within their project.
func projectAdmin(p policy) policy { p.ProjectAdmin = true; return p }

// globalAdmin reports whether p administers every project: an admin
// token of project "*". An admin token of one project administers that
// project only: its VMs, images, templates, snapshots and tokens.
func globalAdmin(p auth.Principal) bool {
	return p.Role == auth.RoleAdmin && p.Project == auth.AllProjects
}

type authKind int

const (
	authToken authKind = iota
	authJoin
	authNone
)

const policyKey = "nexus.policy"

type principalKey struct{}

// agentNamesKey carries the names an agent's verified client certificate
// vouches for (mutual TLS).
type agentNamesKey struct{}

var roleRank = map[auth.Role]int{auth.RoleViewer: 1, auth.RoleOperator: 2, auth.RoleAdmin: 3}

// principal returns the authenticated caller of a request.
func principal(ctx context.Context) (auth.Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(auth.Principal)
	return p, ok
}

// scope is what the caller may see: an admin of every project sees
// every project, anyone else (a project's admin too) only the project of
// their token.
func scope(ctx context.Context) manager.Scope {
	p, ok := principal(ctx)
	if !ok {
		return manager.Scope{} // sees nothing
	}
	if globalAdmin(p) {
		return manager.All
	}
	// A token of project "*" reads (or, as operator, acts on) every project.
	return manager.Scope{Project: p.Project}
}

func bearer(h string) string {
	if v, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return ""
}

// guard enforces each operation's policy before its handler runs, and
// audits every mutating call: a pending row on entry, the result on exit,
// denied calls included.
func (s *Server) guard(ctx huma.Context, next func(huma.Context)) {
	pol, ok := ctx.Operation().Metadata[policyKey].(policy)
	if !ok {
		// Fail closed: an operation registered without a policy is a bug.
		s.writeHumaErr(ctx, apierr.Internal(errors.New("operation "+ctx.Operation().OperationID+" has no policy")))
		return
	}
	// Before anything is looked up or written: a path value longer than
	// its documented bound names nothing, and must not reach the audit.
	if e := checkPathBounds(ctx); e != nil {
		s.writeHumaErr(ctx, e)
		return
	}
	if pol.Auth == authNone {
		next(ctx)
		return
	}
	// A source whose calls without a valid token used up its bucket is
	// refused before its token is looked up and hashed, and before the
	// audit: guessing costs the guesser.
	src := sourceKey(sourceOf(ctx))
	if err := s.limits.blocked(classAuthFail, src, src); err != nil {
		s.writeHumaErr(ctx, err)
		return
	}
	switch pol.Auth {
	case authJoin:
		want := s.joinToken
		got := bearer(ctx.Header("Authorization"))
		if want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			s.limits.spend(classAuthFail, src)
			s.deny(ctx, pol, anonymous, apierr.Unauthorized("missing or wrong join token").
				WithSuggestion("agents register with the fleet's join token (AGENT_TOKEN = the manager's NEXUS_JOIN_TOKEN)"))
			return
		}
		actor := "agent"
		if s.agentCert {
			// The TLS handshake verified a certificate presented against
			// the CA; here it must have been presented at all.
			names := pki.PeerNames(ctx.TLS())
			if len(names) == 0 {
				s.deny(ctx, pol, anonymous, apierr.Newf(http.StatusForbidden, "agent_cert_required", "agents must present a client certificate of the manager's CA").
					WithSuggestion("give the agent --tls-cert and --tls-key issued by this CA (`nexus cert issue --host NAME`)"))
				return
			}
			ctx = huma.WithValue(ctx, agentNamesKey{}, names)
			actor = "agent " + names[0]
		}
		s.audited(ctx, pol, actor, next)
		return
	}
	tok := bearer(ctx.Header("Authorization"))
	if tok == "" {
		s.limits.spend(classAuthFail, src)
		s.deny(ctx, pol, anonymous, apierr.Unauthorized("missing bearer token").
			WithSuggestion("send 'Authorization: Bearer <token>'; `nexus up` printed an admin token and wrote it to <data-dir>/admin.token"))
		return
	}
	p, err := s.auth.Authenticate(ctx.Context(), tok)
	if err != nil {
		if errors.Is(err, auth.ErrUnauthenticated) {
			s.limits.spend(classAuthFail, src)
			s.deny(ctx, pol, anonymous, apierr.Unauthorized("invalid, revoked or rotated token"))
		} else {
			s.writeHumaErr(ctx, s.toAPIError(ctx.Context(), err))
		}
		return
	}
	ctx = huma.WithValue(ctx, principalKey{}, p)
	// Every token's calls, by class; a refused call changes nothing and
	// is not audited (it never started).
	if err := s.limits.take(classOf(ctx.Operation(), pol), p.TokenID, p.Actor()); err != nil {
		s.writeHumaErr(ctx, err)
		return
	}
	if roleRank[p.Role] < roleRank[pol.Role] {
		s.deny(ctx, pol, p.Actor(), apierr.Forbidden("role %s may not %s; it needs %s", p.Role, describeAction(pol, ctx), pol.Role).
			WithSuggestion("ask an admin for a token with that role"))
		return
	}
	if pol.Role == auth.RoleAdmin && !pol.ProjectAdmin && !globalAdmin(p) {
		s.deny(ctx, pol, p.Actor(), apierr.Forbidden("an admin token of project %s administers that project only; %s needs an admin of every project", p.Project, describeAction(pol, ctx)).
			WithSuggestion("ask for an admin token of project \"*\""))
		return
	}
	if strings.HasPrefix(ctx.Operation().Path, "/v1/vms/{id}") {
		s.vmByName(ctx)
	}
	s.audited(ctx, pol, p.Actor(), next)
}

// checkPathBounds refuses a path parameter longer than its schema's
// maxLength (every path parameter has one: TestPathParametersBounded) with
// the 400 huma's validation would give, but before authentication and
// the audit see it.
func checkPathBounds(ctx huma.Context) *apierr.Error {
	for _, p := range ctx.Operation().Parameters {
		if p.In != "path" || p.Schema == nil || p.Schema.MaxLength == nil {
			continue
		}
		if v := ctx.Param(p.Name); len(v) > *p.Schema.MaxLength {
			return apierr.Newf(http.StatusBadRequest, "invalid_request", "path.%s: %d bytes; at most %d", p.Name, len(v), *p.Schema.MaxLength).
				WithSuggestion("see GET /openapi.json for the path's bounds")
		}
	}
	return nil
}

// vmByName lets every /v1/vms/{id}… route take a VM's name as well as its
// id, as images and templates do: a name (in the token's project, or the
// default one) is replaced by its VM's id in the route's parameters before
// the handler and the audit trail read them, so both see the id. An
// id-shaped reference, or a name of no VM, is left as it is (the handler
// answers 404 for it).
func (s *Server) vmByName(ctx huma.Context) {
	ref := ctx.Param("id")
	if uuid.Validate(ref) == nil || !nameRE.MatchString(ref) {
		return
	}
	vm, err := s.vms.GetVMByName(ctx.Context(), scope(ctx.Context()), "", ref)
	if err != nil {
		return
	}
	// huma reads path parameters from the request (PathValue), chi from
	// its route context: both get the id.
	r, _ := humachi.Unwrap(ctx)
	r.SetPathValue("id", vm.ID)
	if rc := chi.RouteContext(r.Context()); rc != nil {
		for i, k := range rc.URLParams.Keys {
			if k == "id" {
				rc.URLParams.Values[i] = vm.ID
			}
		}
	}
}

// nameRE is the names' pattern (apitypes: minLength 1, maxLength 63).
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func describeAction(pol policy, ctx huma.Context) string {
	if pol.Action != "" {
		return pol.Action
	}
	return ctx.Operation().Method + " " + ctx.Operation().Path
}

// writeHumaErr writes an error from middleware in the contract's shape.
func (s *Server) writeHumaErr(ctx huma.Context, err error) {
	var he huma.HeadersError
	if errors.As(err, &he) {
		for k, vs := range he.GetHeaders() {
			for _, v := range vs {
				ctx.AppendHeader(k, v)
			}
		}
	}
	e := *apierr.From(err)
	e.RequestID = httpmw.RequestID(ctx.Context())
	httpmw.SetErrorCode(ctx.Context(), e.Code)
	if e.Status == 0 {
		e.Status = http.StatusInternalServerError
	}
	ctx.SetHeader("Content-Type", "application/json")
	ctx.SetStatus(e.Status)
	_ = jsonEncode(ctx.BodyWriter(), &e)
}
