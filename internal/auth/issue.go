package auth

import (
	"context"
	"fmt"

	"github.com/nexus-microvm/nexus/internal/store"
)

// TokenWriter is what issuing and rotating tokens needs from the store.
type TokenWriter interface {
	CreateToken(ctx context.Context, t store.APIToken) (store.APIToken, error)
	UpdateTokenHash(ctx context.Context, id, prefix, hash string) (store.APIToken, error)
}

// newHashed makes a fresh secret and its lookup prefix and hash.
func newHashed() (secret, lookup, hash string, err error) {
	secret, lookup, err = NewSecret()
	if err != nil {
		return "", "", "", err
	}
	_, sec, _ := SplitToken(secret)
	if hash, err = Hash(sec); err != nil {
		return "", "", "", err
	}
	return secret, lookup, hash, nil
}

// Issue creates a token and returns its secret, which is never stored and
// never shown again.
// An empty id lets the store choose one.
func Issue(ctx context.Context, st TokenWriter, id, owner string, role Role, project string) (string, store.APIToken, error) {
	secret, lookup, hash, err := newHashed()
	if err != nil {
		return "", store.APIToken{}, err
	}
	rec, err := st.CreateToken(ctx, store.APIToken{ID: id, Prefix: lookup, Hash: hash, Owner: owner, Role: string(role), Project: project})
	if err != nil {
		return "", store.APIToken{}, fmt.Errorf("issue token for %s: %w", owner, err)
	}
	return secret, rec, nil
}

// Rotate gives token id a new secret; the old one stops working.
func Rotate(ctx context.Context, st TokenWriter, id string) (string, store.APIToken, error) {
	secret, lookup, hash, err := newHashed()
	if err != nil {
		return "", store.APIToken{}, err
	}
	rec, err := st.UpdateTokenHash(ctx, id, lookup, hash)
	if err != nil {
		return "", store.APIToken{}, fmt.Errorf("rotate token %s: %w", id, err)
	}
	return secret, rec, nil
}
