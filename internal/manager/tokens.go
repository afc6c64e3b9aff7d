package manager

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nexus-microvm/nexus/internal/auth"
	"github.com/nexus-microvm/nexus/internal/store"
)

// TokenChannel carries the ids of revoked and rotated tokens to every
// manager sharing the store, so their caches drop them at once.
const TokenChannel = "nexus_tokens"

// CreateToken issues a token; the secret is in the answer only.
// id may be empty (the store picks one).
func (s *Tokens) CreateToken(ctx context.Context, id, owner, role, project string) (string, store.APIToken, error) {
	owner = strings.TrimSpace(owner)
	switch {
	case owner == "":
		return "", store.APIToken{}, invalid("owner is required: who (or what) uses the token")
	case !auth.ValidRole(role):
		return "", store.APIToken{}, invalid("role must be viewer, operator or admin, not %q", role)
	case project == "":
		return "", store.APIToken{}, invalid("project is required (\"*\" for every project)")
	}
	secret, rec, err := auth.Issue(ctx, s.st, id, owner, auth.Role(role), project)
	if err != nil {
		return "", rec, err
	}
	return secret, rec, nil
}

// ListTokens lists tokens (never secrets); revoked ones with all.
func (s *Tokens) ListTokens(ctx context.Context, all bool) ([]store.APIToken, error) {
	return s.st.ListTokens(ctx, store.TokenFilter{IncludeRevoked: all})
}

// GetToken returns one token record.
func (s *Tokens) GetToken(ctx context.Context, id string) (store.APIToken, error) {
	t, err := s.st.GetToken(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return t, notFound("token", id)
	}
	return t, err
}

// RevokeToken makes a token stop working now, on every manager.
func (s *Tokens) RevokeToken(ctx context.Context, id string) error {
	if _, err := s.GetToken(ctx, id); err != nil {
		return err
	}
	if err := s.st.RevokeToken(ctx, id); err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return s.tokenChanged(ctx, id)
}

// RotateToken gives a token a new secret; the old one stops working now.
func (s *Tokens) RotateToken(ctx context.Context, id string) (string, store.APIToken, error) {
	if _, err := s.GetToken(ctx, id); err != nil {
		return "", store.APIToken{}, err
	}
	secret, rec, err := auth.Rotate(ctx, s.st, id)
	if errors.Is(err, store.ErrConflict) {
		return "", rec, conflict("token_revoked", "token %s is revoked; revoked tokens cannot be rotated", id).
			suggest("create a new token")
	}
	if err != nil {
		return "", rec, err
	}
	return secret, rec, s.tokenChanged(ctx, id)
}

// tokenChanged tells every manager's authentication cache to forget id.
func (s *Tokens) tokenChanged(ctx context.Context, id string) error {
	if err := s.st.Notify(ctx, TokenChannel, id); err != nil {
		return fmt.Errorf("announce token change %s: %w", id, err)
	}
	if s.OnChange != nil {
		s.OnChange(id)
	}
	return nil
}
