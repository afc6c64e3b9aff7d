package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// instanceFile holds the agent's instance id, the owner named in the mark
// of every host object the agent creates (docs/networking.md). It lives in
// the run dir, so it survives agent restarts and goes with the run dir.
const instanceFile = "agent.id"

// lockFile is held (flock) while an agent runs on a run dir: two agents on
// one run dir would each take the other's VMs for their own.
const lockFile = "agent.lock"

// InstanceID returns the instance id stored in runDir, creating one (12
// random hex digits) if there is none.
func InstanceID(runDir string) (string, error) {
	path := filepath.Join(runDir, instanceFile)
	if id, err := ReadInstanceID(runDir); err == nil {
		return id, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("agent instance id: %w", err)
	}
	id := hex.EncodeToString(b)
	// O_EXCL: if another process wrote one in the meantime, theirs wins.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return ReadInstanceID(runDir)
	}
	if err != nil {
		return "", fmt.Errorf("agent instance id: %w", err)
	}
	_, werr := f.WriteString(id + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return "", fmt.Errorf("agent instance id: %w", werr)
	}
	return id, nil
}

// ReadInstanceID reads the instance id of the agent of runDir; a missing
// file is os.ErrNotExist (no agent ever ran there).
func ReadInstanceID(runDir string) (string, error) {
	path := filepath.Join(runDir, instanceFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if len(id) != 12 || strings.Trim(id, "0123456789abcdef") != "" {
		return "", fmt.Errorf("agent instance id in %s: %q is not 12 hex digits; remove the file only if no VM of this run dir is running", path, id)
	}
	return id, nil
}

// LockRunDir takes the run dir's lock for as long as the agent runs. It
// fails at once, naming the holder, when another agent has it.
func LockRunDir(runDir string) (release func(), err error) {
	path := filepath.Join(runDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock run dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("run dir %s is in use by another agent (pid %s); give each agent its own FC_RUN_DIR",
				runDir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lock run dir: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
