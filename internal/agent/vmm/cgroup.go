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
// cgroup2 hierarchy is mounted and writable: <mount>/nexus/fc-<vm-id>. The
// VMM then leaves the agent's group (its accounting is its own and a
// service manager stopping the agent's group does not reach it). Where
// that is not possible the VMM stays in the agent's group: best effort.

// cgroupRoot returns the nexus directory in the cgroup2 hierarchy, or "".
func cgroupRoot() string {
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
				root := filepath.Join(fields[4], "nexus")
				if err := os.MkdirAll(root, 0o755); err != nil {
					return ""
				}
				return root
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
	dir := filepath.Join(root, "fc-"+vmID)
	for range 50 {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CgroupDir is where the group of vmID's VMM is (or would be), "" when
// cgroups are not available. Tests use it to check for leftovers.
func CgroupDir(vmID string) string {
	root := cgroupRoot()
	if root == "" {
		return ""
	}
	return filepath.Join(root, "fc-"+vmID)
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
