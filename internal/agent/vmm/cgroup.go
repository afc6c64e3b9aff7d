package vmm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
	for _, m := range cgroupMounts() {
		if m.v2 {
			return filepath.Join(m.dir, "nexus")
		}
	}
	return ""
}

// cgroupMount is one cgroup hierarchy of /proc/self/mountinfo.
type cgroupMount struct {
	dir         string
	v2          bool
	controllers []string // v1: the controllers bound to it
}

// cgroupMounts lists the cgroup2 mount and the cgroup v1 mounts.
func cgroupMounts() []cgroupMount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "id parent maj:min root mountpoint opts … - fstype source superopts"
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl != "-" || i+3 >= len(fields) || len(fields) <= 4 {
				continue
			}
			switch fields[i+1] {
			case "cgroup2":
				out = append(out, cgroupMount{dir: fields[4], v2: true})
			case "cgroup":
				var ctls []string
				for _, o := range strings.Split(fields[i+3], ",") {
					switch o {
					case "memory", "cpu":
						ctls = append(ctls, o)
					}
				}
				if len(ctls) > 0 {
					out = append(out, cgroupMount{dir: fields[4], controllers: ctls})
				}
			}
			break
		}
	}
	return out
}

// Limits bound a jailed VMM, from its VM's configuration: memory and CPU
// in its cgroup, tasks with RLIMIT_NPROC of its own uid (or TasksMax of
// its systemd scope).
type Limits struct {
	MemoryBytes int64 // 0: no limit
	CPUQuotaUs  int64 // CPU time per cpuPeriodUs; 0: no limit
	Pids        int   // tasks (threads); 0: no limit
}

const (
	// vmmMemOverheadMiB is what a VMM may use beyond its guest's memory:
	// the VMM itself (≤ 5 MiB for firecracker), page tables, the page cache
	// of its drives' I/O (charged to its group, reclaimable).
	vmmMemOverheadMiB = 64
	cpuPeriodUs       = 100_000
)

// LimitsFor are the limits of a VM with vcpu vCPUs and memMib MiB: its
// memory plus vmmMemOverheadMiB; its vCPUs plus a quarter of a core for the
// VMM's API and device threads; 64 tasks plus two per vCPU. Zero sizes (an
// unknown configuration) set no limit.
func LimitsFor(vcpu, memMib int) Limits {
	var l Limits
	if memMib > 0 {
		l.MemoryBytes = int64(memMib+vmmMemOverheadMiB) << 20
	}
	if vcpu > 0 {
		l.CPUQuotaUs = int64(vcpu)*cpuPeriodUs + cpuPeriodUs/4
	}
	l.Pids = 64 + 2*max(vcpu, 1)
	return l
}

// v2Controllers enables memory and cpu in this agent's part of the
// cgroup2 hierarchy (nexus/ and nexus/<owner>/, ours) where the hierarchy
// offers them, and returns those now available to the VMM groups. It never
// writes outside nexus/: a controller the host's root does not delegate is
// left to cgroup v1, or unavailable.
func v2Controllers(root string) map[string]bool {
	out := map[string]bool{}
	if root == "" {
		return out
	}
	parent := filepath.Dir(root)
	offered, err := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return out
	}
	for _, c := range strings.Fields(string(offered)) {
		if c != "memory" && c != "cpu" {
			continue
		}
		if os.WriteFile(filepath.Join(parent, "cgroup.subtree_control"), []byte("+"+c), 0) != nil ||
			os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+"+c), 0) != nil {
			continue
		}
		out[c] = true
	}
	return out
}

// v1Dir is the group of vmID's VMM in a cgroup v1 hierarchy.
func v1Dir(mount, owner, vmID string) string {
	return filepath.Join(mount, "nexus", owner, "fc-"+vmID)
}

// applyLimits writes lim's memory and CPU into the VMM's cgroup v2 group
// v2dir for the controllers v2 offers, and into groups of its own in the
// cgroup v1 hierarchies for the others (made here; the helper joins them).
// It returns the v1 groups and the limits no hierarchy could take. Tasks
// are limited with RLIMIT_NPROC instead: joining a v1 group costs an RCU
// grace period under a global lock, milliseconds per VMM that concurrent
// spawns queue for.
func applyLimits(v2dir string, v2 map[string]bool, owner, vmID string, lim Limits) (v1 []string, missing []string, err error) {
	type setting struct{ file, value string }
	want := map[string][]setting{}
	if lim.MemoryBytes > 0 {
		want["memory"] = nil
	}
	if lim.CPUQuotaUs > 0 {
		want["cpu"] = nil
	}
	v2set := func(c string) []setting {
		switch c {
		case "memory":
			return []setting{{"memory.max", strconv.FormatInt(lim.MemoryBytes, 10)}}
		}
		return []setting{{"cpu.max", fmt.Sprintf("%d %d", lim.CPUQuotaUs, cpuPeriodUs)}}
	}
	v1set := func(c string) []setting {
		switch c {
		case "memory":
			return []setting{{"memory.limit_in_bytes", strconv.FormatInt(lim.MemoryBytes, 10)}}
		}
		return []setting{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUs)}, {"cpu.cfs_quota_us", strconv.FormatInt(lim.CPUQuotaUs, 10)}}
	}
	write := func(dir string, ss []setting) error {
		for _, s := range ss {
			if err := os.WriteFile(filepath.Join(dir, s.file), []byte(s.value), 0); err != nil {
				return fmt.Errorf("cgroup %s: %s=%s: %w", dir, s.file, s.value, err)
			}
		}
		return nil
	}
	for c := range want {
		if v2dir != "" && v2[c] {
			if err := write(v2dir, v2set(c)); err != nil {
				return v1, nil, err
			}
			delete(want, c)
		}
	}
	if len(want) > 0 {
		for _, m := range cgroupMounts() {
			if m.v2 || owner == "" {
				continue
			}
			var here []string
			for _, c := range m.controllers {
				if _, ok := want[c]; ok {
					here = append(here, c)
				}
			}
			if len(here) == 0 {
				continue
			}
			dir := v1Dir(m.dir, owner, vmID)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return v1, nil, fmt.Errorf("cgroup %s: %w", dir, err)
			}
			v1 = append(v1, dir)
			for _, c := range here {
				if err := write(dir, v1set(c)); err != nil {
					return v1, nil, err
				}
				delete(want, c)
			}
		}
	}
	for c := range want {
		missing = append(missing, c)
	}
	return v1, missing, nil
}

// v1Roots are this agent's directories in the cgroup v1 hierarchies that
// take VMM limits (memory, cpu: <mount>/nexus/<owner>).
func v1Roots(owner string) []string {
	if owner == "" {
		return nil
	}
	var out []string
	for _, m := range cgroupMounts() {
		if !m.v2 {
			out = append(out, filepath.Join(m.dir, "nexus", owner))
		}
	}
	return out
}

// removeV1 removes vmID's groups in the cgroup v1 hierarchies.
func removeV1(owner, vmID string) {
	for _, r := range v1Roots(owner) {
		cgroupRemoveDir(filepath.Join(r, "fc-"+vmID))
	}
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

// CgroupDirs are every group the VMM of vmID may have: its cgroup2 group
// and its groups in the cgroup v1 hierarchies that hold jail limits.
// Tests use it to check for leftovers.
func CgroupDirs(owner, vmID string) []string {
	var out []string
	if d := CgroupDir(owner, vmID); d != "" {
		out = append(out, d)
	}
	for _, r := range v1Roots(owner) {
		out = append(out, filepath.Join(r, "fc-"+vmID))
	}
	return out
}

// CgroupRoots are this agent instance's own cgroup directories, one per
// hierarchy (tests check them for leftovers).
func CgroupRoots(owner string) []string {
	var out []string
	if base := cgroupBase(); base != "" && owner != "" {
		out = append(out, filepath.Join(base, owner))
	}
	return append(out, v1Roots(owner)...)
}

// RemoveCgroupRoot removes the agent instance's own cgroup directory once
// it holds no group (`nexus down`). Missing is success.
func RemoveCgroupRoot(owner string) error {
	if owner == "" {
		return nil
	}
	for _, r := range v1Roots(owner) {
		if err := removeGroupRoot(r); err != nil {
			return err
		}
	}
	base := cgroupBase()
	if base == "" {
		return nil
	}
	return removeGroupRoot(filepath.Join(base, owner))
}

// removeGroupRoot removes an agent's directory in one hierarchy once its
// VMM groups are gone, and the shared nexus/ parent once empty.
func removeGroupRoot(root string) error {
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
	_ = os.Remove(filepath.Dir(root))
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
	for _, r := range v1Roots(s.cfg.Owner) {
		_ = os.Remove(r)
		// The shared nexus/ of the hierarchy, once no agent's dir is in it
		// (rmdir fails on a directory that is not empty).
		_ = os.Remove(filepath.Dir(r))
	}
	if s.cgroups == "" {
		return
	}
	if os.Remove(s.cgroups) == nil {
		_ = os.Remove(filepath.Dir(s.cgroups))
	}
}

// pruneAllCgroups prunes the VMM groups of every hierarchy.
func (s *Supervisor) pruneAllCgroups(live map[string]bool) {
	pruneCgroups(s.cgroups, live)
	for _, r := range v1Roots(s.cfg.Owner) {
		pruneCgroups(r, live)
	}
}
