package model

import "strings"

// Phase says when firecracker accepts a call.
type Phase int

const (
	// PhaseAny: always.
	PhaseAny Phase = iota
	// PhasePre: before InstanceStart only ("not supported after starting").
	PhasePre
	// PhasePost: after InstanceStart only ("not supported before starting").
	// Paused counts as post-boot.
	PhasePost
	// PhasePreOrHotplug: before boot; after boot a PCI hotplug on v1.16+.
	PhasePreOrHotplug
)

// Endpoint is one method+path of the Firecracker API.
type Endpoint struct {
	Method string
	// Path is the route; a trailing "/{id}" segment matches one path id.
	Path  string
	Phase Phase
}

// Endpoints lists every endpoint of the Firecracker API (the OpenAPI file
// plus the hot-unplug DELETEs of v1.16). PUT /actions is PhaseAny here
// because each action has its own rule.
var Endpoints = []Endpoint{
	{"GET", "/", PhaseAny},
	{"GET", "/version", PhaseAny},
	{"GET", "/vm/config", PhaseAny},
	{"PATCH", "/vm", PhasePost},
	{"PUT", "/actions", PhaseAny},
	{"GET", "/machine-config", PhaseAny},
	{"PUT", "/machine-config", PhasePre},
	{"PATCH", "/machine-config", PhasePre},
	{"PUT", "/boot-source", PhasePre},
	{"PUT", "/cpu-config", PhasePre},
	{"PUT", "/drives/{id}", PhasePreOrHotplug},
	{"PATCH", "/drives/{id}", PhasePost},
	{"DELETE", "/drives/{id}", PhasePost},
	{"PUT", "/network-interfaces/{id}", PhasePreOrHotplug},
	{"PATCH", "/network-interfaces/{id}", PhasePost},
	{"DELETE", "/network-interfaces/{id}", PhasePost},
	{"PUT", "/pmem/{id}", PhasePreOrHotplug},
	{"PATCH", "/pmem/{id}", PhasePost},
	{"DELETE", "/pmem/{id}", PhasePost},
	{"PUT", "/logger", PhasePre},
	{"PUT", "/metrics", PhasePre},
	{"PUT", "/snapshot/create", PhasePost},
	{"PUT", "/snapshot/load", PhasePre},
	{"GET", "/balloon", PhaseAny},
	{"PUT", "/balloon", PhasePre},
	{"PATCH", "/balloon", PhasePost},
	{"GET", "/balloon/statistics", PhasePost},
	{"PATCH", "/balloon/statistics", PhasePost},
	{"PATCH", "/balloon/hinting/start", PhasePost},
	{"GET", "/balloon/hinting/status", PhasePost},
	{"PATCH", "/balloon/hinting/stop", PhasePost},
	{"GET", "/mmds", PhaseAny},
	{"PUT", "/mmds", PhaseAny},
	{"PATCH", "/mmds", PhaseAny},
	{"PUT", "/mmds/config", PhasePre},
	{"PUT", "/vsock", PhasePre},
	{"PUT", "/entropy", PhasePre},
	{"PUT", "/serial", PhasePre},
	{"GET", "/hotplug/memory", PhasePost},
	{"PUT", "/hotplug/memory", PhasePre},
	{"PATCH", "/hotplug/memory", PhasePost},
}

// Lookup finds the endpoint for method and path (path without query).
// It returns the endpoint, the path id for "/{id}" routes, and whether one
// matched.
func Lookup(method, path string) (Endpoint, string, bool) {
	for _, e := range Endpoints {
		if e.Method != method {
			continue
		}
		if prefix, ok := strings.CutSuffix(e.Path, "/{id}"); ok {
			rest, found := strings.CutPrefix(path, prefix+"/")
			if found && rest != "" && !strings.Contains(rest, "/") {
				return e, rest, true
			}
			continue
		}
		if e.Path == path {
			return e, "", true
		}
	}
	return Endpoint{}, "", false
}

// ValidID reports whether id is a valid path id: non-empty, only
// [A-Za-z0-9_] (firecracker's rule for drive, iface and pmem ids).
func ValidID(id string) bool {
	if id == "" {
		return false
	}
	for _, r := range id {
		if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}
