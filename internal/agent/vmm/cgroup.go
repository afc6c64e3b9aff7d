package vmm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Without systemd, each VMM gets a cgroup v2 group of its own where the
// cgroup2 hierarchy is mounted and writable: <mount>/nexus/<owner>/fc-<vm-id>,
// under a directory per agent instance (the owner mark), so one agent's
// prune never sees another's groups. The
// VMM then leaves the agent's group (its accounting is its own and a
// service manager stopping the agent's group does not reach it). Where
// that is not possible the VMM stays in the agent's group: best effort.

// cgroupRoot returns this agent's directory in the cgroup2 hierarchy
// (<mount>/nexus/<owner>), or "" when cgroups are not available.
func cgroupRoot(owner string) string {
	base := cgroupBase()
	if base == "" || owner == "" {
		return ""
	}
	root := filepath.Join(base, owner)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return ""
	}
	return root
}

// cgroupBase returns <mount>/nexus in the cgroup2 hierarchy, or "".
func cgroupBase() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "… mountpoint … - cgroup2 cgroup2 rw"
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return filepath.Join(fields[4], "nexus")
			}
		}
	}
	return ""
}

// cgroupOpen makes the VM's group and opens it, for a child to be born in.
func cgroupOpen(root, vmID string) (string, *os.File, error) {
	dir := filepath.Join(root, "fc-"+vmID)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", nil, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		_ = os.Remove(dir)
		return "", nil, fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return dir, f, nil
}

// cgroupRemove removes a VM's group once its processes are gone. rmdir
// fails (EBUSY) while the group holds any, and a killed process that was
// not our child leaves only when its new parent reaps it: retry a little;
// the periodic prune catches the rest.
func cgroupRemove(root, vmID string) {
	if root == "" {
		return
	}
	cgroupRemoveDir(filepath.Join(root, "fc-"+vmID))
}

// cgroupRemoveDir removes one VMM group, retrying while it is busy.
func cgroupRemoveDir(dir string) {
	for range 50 {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CgroupDir is where the group of the VMM of vmID, run by the agent
// instance owner, is (or would be); "" when cgroups are not available.
// Tests use it to check for leftovers.
func CgroupDir(owner, vmID string) string {
	base := cgroupBase()
	if base == "" || owner == "" {
		return ""
	}
	return filepath.Join(base, owner, "fc-"+vmID)
}

// RemoveCgroupRoot removes the agent instance's own cgroup directory once
// it holds no group (`nexus down`). Missing is success.
func RemoveCgroupRoot(owner string) error {
	base := cgroupBase()
	if base == "" || owner == "" {
		return nil
	}
	root := filepath.Join(base, owner)
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", root, err)
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "fc-") {
			_ = os.Remove(filepath.Join(root, e.Name())) // EBUSY while a process is in it
		}
	}
	if err := os.Remove(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cgroup %s: %w", root, err)
	}
	// The shared parent goes too once no agent uses it.
	_ = os.Remove(base)
	return nil
}

// pruneCgroups removes the groups of VMs that have no live VMM (a VMM
// killed while the agent was down leaves its group behind). A group that
// still holds a process is not removable, so nothing live is touched.
func pruneCgroups(root string, live map[string]bool) {
	if root == "" {
		return
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), "fc-")
		if !ok || !e.IsDir() || live[id] {
			continue
		}
		_ = os.Remove(filepath.Join(root, e.Name()))
	}
}

// ReleaseCgroups removes the agent's cgroup directory if no VMM group is
// left in it (an agent stopping with no VM running), and the shared parent
// if no other agent uses it. Groups of running VMMs keep both in place.
func (s *Supervisor) ReleaseCgroups() {
	if s.cgroups == "" {
		return
	}
	if os.Remove(s.cgroups) == nil {
		_ = os.Remove(filepath.Dir(s.cgroups))
	}
}
