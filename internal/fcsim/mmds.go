package fcsim

import (
	"encoding/json"
	"sync"
)

// mmdsStore is the MMDS data store: any JSON value, size-limited, with
// firecracker's two flags: exists (the store was created, which any MMDS
// call or the MMDS configuration does before boot) and initialized (data
// was PUT, which a PATCH needs).
type mmdsStore struct {
	mu          sync.Mutex
	limit       int
	exists      bool
	initialized bool
	data        any // a decoded serde_json::Value (serde.go)
	version     string
	imdsCompat  bool
}

var (
	errMMDSLimit          = &vmmError{413, "MMDS limit exceeded error: The MMDS patch request doesn't fit."}
	errMMDSNotInitialized = fault("MMDS error: The MMDS data store is not initialized.")
)

func (m *mmdsStore) create() {
	m.mu.Lock()
	if !m.exists {
		m.exists, m.version = true, "V1"
	}
	m.mu.Unlock()
}

func (m *mmdsStore) put(v any) *vmmError {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.exists = true
	if m.version == "" {
		m.version = "V1"
	}
	// The limit applies to serde_json's compact encoding.
	if len(marshalJSON(v)) > m.limit {
		return errMMDSLimit
	}
	m.data, m.initialized = v, true
	return nil
}

func (m *mmdsStore) patch(v any) *vmmError {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.initialized {
		return errMMDSNotInitialized
	}
	merged := mergePatch(cloneValue(m.data), v)
	if len(marshalJSON(merged)) > m.limit {
		return errMMDSLimit
	}
	m.data = merged
	return nil
}

// value is GET /mmds: a null store reads as {}.
func (m *mmdsStore) value() json.RawMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.data == nil {
		return json.RawMessage("{}")
	}
	return marshalJSON(m.data)
}

// mergePatch is firecracker's json_patch (RFC 7396 JSON merge patch).
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
		} else {
			t[k] = mergePatch(t[k], v)
		}
	}
	return t
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = cloneValue(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = cloneValue(e)
		}
		return s
	}
	return v
}

// mmdsReachable says whether the running VM has a data store: after boot
// firecracker looks for it on the network devices that serve MMDS, so
// without an MMDS configuration there is none, whatever was PUT before.
func (s *sim) mmdsReachable() bool {
	for _, n := range s.res.nets {
		if n.mmds {
			return true
		}
	}
	return false
}

func (s *sim) putMMDS(v any) *vmmError {
	if s.started() && !s.mmdsReachable() {
		return errMMDSNotInitialized
	}
	return s.mmds.put(v)
}

func (s *sim) patchMMDS(v any) *vmmError {
	if s.started() && !s.mmdsReachable() {
		return errMMDSNotInitialized
	}
	s.mmds.create()
	return s.mmds.patch(v)
}

func (s *sim) getMMDS() (any, *vmmError) {
	if s.started() && !s.mmdsReachable() {
		return nil, errMMDSNotInitialized
	}
	s.mmds.create()
	return s.mmds.value(), nil
}

// mmdsConfigOut is the MMDS configuration firecracker rebuilds for GET
// /vm/config from the network devices that serve MMDS, or nil.
func (s *sim) mmdsConfigOut() any {
	if !s.mmds.exists {
		return nil
	}
	var ifaces []string
	for _, n := range s.res.nets {
		if n.mmds {
			ifaces = append(ifaces, n.cfg.IfaceID)
		}
	}
	if len(ifaces) == 0 {
		return nil
	}
	return object{{"version", s.mmds.version}, {"network_interfaces", ifaces},
		{"ipv4_address", s.res.mmdsIPv4}, {"imds_compat", s.mmds.imdsCompat}}
}
