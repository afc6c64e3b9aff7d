package fcsim

import (
	"bytes"
	"encoding/json"
	"sync"
)

// mmdsStore is the MMDS data store: any JSON value, size-limited.
type mmdsStore struct {
	mu          sync.Mutex
	limit       int
	initialized bool
	data        any
}

func (m *mmdsStore) init() {
	m.mu.Lock()
	m.initialized = true
	m.mu.Unlock()
}

var errMMDSLimit = &vmmError{413, "MMDS limit exceeded error: The MMDS patch request doesn't fit."}

func (m *mmdsStore) put(v any) *vmmError {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.initialized = true
	if b, _ := json.Marshal(v); len(b) > m.limit {
		return errMMDSLimit
	}
	m.data = v
	return nil
}

func (m *mmdsStore) patch(v any) *vmmError {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.initialized {
		return fault("MMDS error: The MMDS data store is not initialized.")
	}
	merged := mergePatch(cloneJSON(m.data), v)
	if b, _ := json.Marshal(merged); len(b) > m.limit {
		return errMMDSLimit
	}
	m.data = merged
	return nil
}

// mergePatch is RFC 7396 JSON merge patch, which firecracker applies.
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

func cloneJSON(v any) any {
	b, _ := json.Marshal(v)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out any
	dec.Decode(&out)
	return out
}

func (s *sim) putMMDS(v any) *vmmError { return s.mmds.put(v) }

func (s *sim) patchMMDS(v any) *vmmError { return s.mmds.patch(v) }

func (s *sim) getMMDS() (any, *vmmError) {
	s.mmds.mu.Lock()
	defer s.mmds.mu.Unlock()
	if !s.mmds.initialized && s.started() {
		return nil, fault("MMDS error: The MMDS data store is not initialized.")
	}
	if s.mmds.data == nil {
		return json.RawMessage("{}"), nil
	}
	b, _ := json.Marshal(s.mmds.data)
	return json.RawMessage(b), nil
}
