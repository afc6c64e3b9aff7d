package auth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/nexus-microvm/nexus/internal/store"
)

// Role is what a token may do.
type Role string

// The roles, weakest first.
const (
	RoleViewer   Role = "viewer"
	RoleOperator Role = "operator"
	RoleAdmin    Role = "admin"
)

// ValidRole reports whether r is one of the roles.
func ValidRole(r string) bool {
	switch Role(r) {
	case RoleViewer, RoleOperator, RoleAdmin:
		return true
	}
	return false
}

// AllProjects as a token's project means every project (admin tokens).
const AllProjects = "*"

// Principal is an authenticated caller.
type Principal struct {
	TokenID string
	Owner   string
	Role    Role
	Project string
}

// Actor names the caller in audit rows and logs.
func (p Principal) Actor() string {
	if p.Owner == "" {
		return "token:" + p.TokenID
	}
	return p.Owner + " (token " + p.TokenID + ")"
}

// ErrUnauthenticated: no token, a malformed, unknown, revoked or wrong one.
var ErrUnauthenticated = errors.New("unauthenticated")

// TokenStore is what the Authenticator needs from the store.
type TokenStore interface {
	GetTokenByPrefix(ctx context.Context, prefix string) (store.APIToken, error)
	TouchTokens(ctx context.Context, lastUsed map[string]time.Time) error
}

type cached struct {
	p       Principal
	expires time.Time
}

// Authenticator verifies bearer tokens. A verified token is cached for TTL
// (keyed by a hash of the whole token, never the token itself), so only a
// token's first use per TTL pays for argon2id; Invalidate drops a revoked
// or rotated token at once. last_used_at is collected in memory and written
// in batches by Run, not once per request.
type Authenticator struct {
	store TokenStore
	log   *slog.Logger
	ttl   time.Duration
	now   func() time.Time

	sem chan struct{} // bounds concurrent argon2id work (19 MiB each)
	sf  singleflight.Group

	mu       sync.Mutex
	cache    map[[32]byte]cached
	byID     map[string][][32]byte
	lastUsed map[string]time.Time
	gen      map[string]int // bumped by Invalidate, so an in-flight verify cannot re-cache
}

// NewAuthenticator returns an Authenticator caching verified tokens for ttl.
func NewAuthenticator(st TokenStore, ttl time.Duration, log *slog.Logger) *Authenticator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Authenticator{
		store: st, log: log, ttl: ttl, now: time.Now,
		sem:      make(chan struct{}, 4),
		cache:    map[[32]byte]cached{},
		byID:     map[string][][32]byte{},
		lastUsed: map[string]time.Time{},
		gen:      map[string]int{},
	}
}

// Authenticate returns the principal of a bearer token.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" {
		return Principal{}, ErrUnauthenticated
	}
	key := sha256.Sum256([]byte(token))
	now := a.now()
	a.mu.Lock()
	if c, ok := a.cache[key]; ok && now.Before(c.expires) {
		a.lastUsed[c.p.TokenID] = now
		a.mu.Unlock()
		return c.p, nil
	}
	a.mu.Unlock()

	v, err, _ := a.sf.Do(string(key[:]), func() (any, error) { return a.verify(ctx, token, key) })
	if err != nil {
		return Principal{}, err
	}
	p := v.(Principal)
	a.mu.Lock()
	a.lastUsed[p.TokenID] = now
	a.mu.Unlock()
	return p, nil
}

func (a *Authenticator) verify(ctx context.Context, token string, key [32]byte) (Principal, error) {
	lookup, secret, err := SplitToken(token)
	if err != nil {
		return Principal{}, ErrUnauthenticated
	}
	rec, err := a.store.GetTokenByPrefix(ctx, lookup)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, ErrUnauthenticated
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate: %w", err)
	}
	if rec.RevokedAt != nil {
		return Principal{}, ErrUnauthenticated
	}
	a.mu.Lock()
	gen := a.gen[rec.ID]
	a.mu.Unlock()

	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return Principal{}, ctx.Err()
	}
	ok, err := Verify(secret, rec.Hash)
	<-a.sem
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate token %s: %w", rec.ID, err)
	}
	if !ok {
		return Principal{}, ErrUnauthenticated
	}
	p := Principal{TokenID: rec.ID, Owner: rec.Owner, Role: Role(rec.Role), Project: rec.Project}
	a.mu.Lock()
	if a.gen[rec.ID] == gen { // not revoked or rotated while we hashed
		a.cache[key] = cached{p: p, expires: a.now().Add(a.ttl)}
		a.byID[rec.ID] = append(a.byID[rec.ID], key)
	}
	a.mu.Unlock()
	return p, nil
}

// Invalidate forgets every cached verification of token id (after revoke
// or rotate), effective for the next request.
func (a *Authenticator) Invalidate(tokenID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.byID[tokenID] {
		delete(a.cache, k)
	}
	delete(a.byID, tokenID)
	a.gen[tokenID]++
}

// Run writes collected last_used_at times every interval until ctx ends,
// and drops expired cache entries.
func (a *Authenticator) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.Flush(context.WithoutCancel(ctx))
			return
		case <-t.C:
			a.Flush(ctx)
			a.expire()
		}
	}
}

// Flush writes the collected last_used_at times now.
func (a *Authenticator) Flush(ctx context.Context) {
	a.mu.Lock()
	batch := a.lastUsed
	a.lastUsed = map[string]time.Time{}
	a.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := a.store.TouchTokens(ctx, batch); err != nil {
		a.log.Warn("could not record token use", "err", err)
	}
}

func (a *Authenticator) expire() {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, c := range a.cache {
		if !now.Before(c.expires) {
			delete(a.cache, k)
		}
	}
}
