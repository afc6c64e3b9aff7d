package store

import (
	"database/sql"
	"errors"
	"fmt"
)

// The store's errors. Every error a method returns wraps at most one of them
// (test with errors.Is) and names the operation and entity, e.g.
// "get vm 3f2a…: not found".
var (
	// ErrNotFound: the entity does not exist (or a referenced one does not,
	// e.g. an event for a deleted VM).
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique key is taken (VM name in its project, token
	// prefix, …) or the entity is in a state that forbids the change (a
	// revoked token, a completed audit entry).
	ErrConflict = errors.New("conflict")
	// ErrStale: UpdateVM lost the optimistic-concurrency race on every retry.
	ErrStale = errors.New("stale: changed concurrently")
	// ErrInvalid: the input cannot be stored (bad cursor, malformed JSON, a
	// value a check constraint rejects).
	ErrInvalid = errors.New("invalid")
	// ErrNoCapacity: CreateVMWithin found the host too full for the VM.
	ErrNoCapacity = errors.New("no capacity")
	// ErrHostNotReady: CreateVMWithin found the host not ready (draining,
	// unreachable): it takes no new VMs.
	ErrHostNotReady = errors.New("host not ready")
	// ErrExhausted: nothing is left to hand out (every address of a host's
	// VM subnet is taken).
	ErrExhausted = errors.New("exhausted")
)

// fail wraps err for the operation op (e.g. "get vm 3f2a"), translating
// database errors into the store's errors first.
func (s *sqlStore) fail(op string, err error) error {
	return fmt.Errorf("%s: %w", op, s.translate(err))
}

// translate maps engine errors onto the store's errors. The driver error is
// kept as text only, so callers cannot come to depend on driver types.
func (s *sqlStore) translate(err error) error {
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict),
		errors.Is(err, ErrStale), errors.Is(err, ErrInvalid), errors.Is(err, ErrNoCapacity),
		errors.Is(err, ErrExhausted), errors.Is(err, ErrQuota), errors.Is(err, ErrHostNotReady):
		return err
	}
	if kind, detail, ok := s.d.classify(err); ok {
		return fmt.Errorf("%w: %s", kind, detail)
	}
	return err
}

// invalidf reports bad input with ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
