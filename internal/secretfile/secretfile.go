// Package secretfile keeps a random secret in a file readable by its owner
// only: read it if present, create it on first use.
package secretfile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// LoadOrCreate returns the secret stored at path, creating a random one
// (192 bits, hex, mode 0600) when the file is missing or empty.
func LoadOrCreate(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return s, nil
		}
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("new secret: %w", err)
	}
	s := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write secret %s: %w", path, err)
	}
	return s, nil
}
