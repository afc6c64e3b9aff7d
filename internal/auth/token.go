// Package auth is who may call the manager: API tokens (random, shown
// once, stored as an argon2id hash behind a non-secret lookup prefix), a
// short-lived cache of verified tokens so authentication stays cheap on the
// hot path, and the roles and project policy.
package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// TokenPrefix starts every Nexus API token, so secret scanners and humans
// can recognise one.
const TokenPrefix = "nxs_"

// argon2id parameters: OWASP's baseline (19 MiB, 2 passes, 1 lane). Tokens
// carry 256 random bits, so the slow hash guards a stolen database, not a
// guessable secret; the verified-token cache keeps it off the hot path.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	saltLen      = 16
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// ErrMalformedToken means a presented token does not have Nexus's shape.
var ErrMalformedToken = errors.New("malformed token")

// NewSecret returns a new token "nxs_<lookup>_<secret>" and its lookup
// prefix. Only the token's holder ever sees the secret part.
func NewSecret() (token, lookup string, err error) {
	var idb [6]byte
	var sec [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return "", "", fmt.Errorf("new token: %w", err)
	}
	if _, err := rand.Read(sec[:]); err != nil {
		return "", "", fmt.Errorf("new token: %w", err)
	}
	lookup = strings.ToLower(b32.EncodeToString(idb[:]))
	token = TokenPrefix + lookup + "_" + strings.ToLower(b32.EncodeToString(sec[:]))
	return token, lookup, nil
}

// SplitToken returns the lookup prefix and secret of a presented token.
func SplitToken(token string) (lookup, secret string, err error) {
	rest, ok := strings.CutPrefix(token, TokenPrefix)
	if !ok {
		return "", "", ErrMalformedToken
	}
	lookup, secret, ok = strings.Cut(rest, "_")
	if !ok || len(lookup) != 10 || len(secret) < 32 || len(secret) > 128 {
		return "", "", ErrMalformedToken
	}
	return lookup, secret, nil
}

// Hash returns the PHC-format argon2id hash of secret.
func Hash(secret string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("hash token: %w", err)
	}
	key := argon2.IDKey([]byte(secret), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

// Verify checks secret against a hash made by Hash (with any parameters).
func Verify(secret, phc string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errors.New("verify token: unknown hash format")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errors.New("verify token: unsupported argon2 version")
	}
	var mem uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &mem, &t, &p); err != nil {
		return false, fmt.Errorf("verify token: parameters: %w", err)
	}
	enc := base64.RawStdEncoding
	salt, err := enc.DecodeString(parts[4])
	if err != nil {
		return false, fmt.Errorf("verify token: salt: %w", err)
	}
	want, err := enc.DecodeString(parts[5])
	if err != nil {
		return false, fmt.Errorf("verify token: key: %w", err)
	}
	got := argon2.IDKey([]byte(secret), salt, t, mem, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
