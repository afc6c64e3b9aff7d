package api

import (
	"context"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// TokenService is what the token routes use (manager.Tokens).
type TokenService interface {
	CreateToken(ctx context.Context, id, owner, role, project string) (string, store.APIToken, error)
	ListTokens(ctx context.Context, all bool) ([]store.APIToken, error)
	GetToken(ctx context.Context, id string) (store.APIToken, error)
	RevokeToken(ctx context.Context, id string) error
	RotateToken(ctx context.Context, id string) (string, store.APIToken, error)
}

type createTokenInput struct {
	Body apitypes.CreateTokenRequest
}

type tokenSecretOutput struct {
	Body apitypes.TokenSecret
}

// inTokenScope refuses a project's admin a token of another project (or
// of every project): it administers its own only.
func inTokenScope(ctx context.Context, project string) error {
	p, _ := principal(ctx)
	if globalAdmin(p) || project == p.Project {
		return nil
	}
	return apierr.Forbidden("an admin token of project %s manages tokens of that project only, not of %q", p.Project, project).
		WithSuggestion("use project " + p.Project + ", or an admin token of project \"*\"")
}

// tokenOfScope returns the token id names if the caller may manage it; a
// token of another project answers 404, as other projects' VMs do.
func (s *Server) tokenOfScope(ctx context.Context, id string) error {
	p, _ := principal(ctx)
	if globalAdmin(p) {
		return nil
	}
	t, err := s.tokens.GetToken(ctx, id)
	if err != nil || t.Project != p.Project {
		return apierr.NotFound("token", id)
	}
	return nil
}

func (s *Server) createToken(ctx context.Context, in *createTokenInput) (*tokenCreatedOutput, error) {
	if err := inTokenScope(ctx, in.Body.Project); err != nil {
		return nil, err
	}
	secret, rec, err := s.tokens.CreateToken(ctx, newID(ctx), in.Body.Owner, in.Body.Role, in.Body.Project)
	if err != nil {
		return nil, err
	}
	return &tokenCreatedOutput{Location: "/v1/tokens/" + rec.ID, Body: apitypes.TokenSecret{ID: rec.ID, Token: secret}}, nil
}

// tokenCreatedOutput answers a create: the token's address (revoke and
// rotate live under it; no route reads a token back).
type tokenCreatedOutput struct {
	Location string `header:"Location" doc:"the new token: /v1/tokens/{id}"`
	Body     apitypes.TokenSecret
}

type listTokensInput struct {
	All bool `query:"all" doc:"include revoked tokens"`
}

type tokenListOutput struct {
	Body apitypes.TokenList
}

func tokenView(t store.APIToken) apitypes.Token {
	return apitypes.Token{ID: t.ID, Owner: t.Owner, Role: t.Role, Project: t.Project, Prefix: t.Prefix,
		CreatedAt: t.CreatedAt, LastUsedAt: t.LastUsedAt, RevokedAt: t.RevokedAt}
}

func (s *Server) listTokens(ctx context.Context, in *listTokensInput) (*tokenListOutput, error) {
	toks, err := s.tokens.ListTokens(ctx, in.All)
	if err != nil {
		return nil, err
	}
	p, _ := principal(ctx)
	out := &tokenListOutput{Body: apitypes.TokenList{Items: make([]apitypes.Token, 0, len(toks))}}
	for _, t := range toks {
		if !globalAdmin(p) && t.Project != p.Project {
			continue // a project's admin sees its project's tokens
		}
		out.Body.Items = append(out.Body.Items, tokenView(t))
	}
	return out, nil
}

type tokenIDPath struct {
	ID string `path:"id" maxLength:"64"`
}

func (s *Server) revokeToken(ctx context.Context, in *tokenIDPath) (*okOutput, error) {
	if err := s.tokenOfScope(ctx, in.ID); err != nil {
		return nil, err
	}
	return ok(), s.tokens.RevokeToken(ctx, in.ID)
}

func (s *Server) rotateToken(ctx context.Context, in *tokenIDPath) (*tokenSecretOutput, error) {
	if err := s.tokenOfScope(ctx, in.ID); err != nil {
		return nil, err
	}
	secret, rec, err := s.tokens.RotateToken(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	return &tokenSecretOutput{Body: apitypes.TokenSecret{ID: rec.ID, Token: secret}}, nil
}
