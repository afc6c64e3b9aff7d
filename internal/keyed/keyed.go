// Package keyed is a mutex per key — one VM, one TAP — that holds no
// memory for keys nobody holds, so it does not grow with every key ever
// used.
package keyed

import "sync"

// Mutex serialises work per key; the zero value is ready to use.
type Mutex struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	sync.Mutex
	refs int // holders and waiters
}

func (k *Mutex) ref(key string) *entry {
	if k.m == nil {
		k.m = map[string]*entry{}
	}
	e := k.m[key]
	if e == nil {
		e = &entry{}
		k.m[key] = e
	}
	e.refs++
	return e
}

// Lock takes key's lock, waiting if needed, and returns its unlock.
func (k *Mutex) Lock(key string) (unlock func()) {
	k.mu.Lock()
	e := k.ref(key)
	k.mu.Unlock()
	e.Lock()
	return k.unlocker(key, e)
}

// TryLock takes key's lock only if it is free.
func (k *Mutex) TryLock(key string) (unlock func(), ok bool) {
	k.mu.Lock()
	e := k.ref(key)
	if !e.TryLock() {
		k.release(key, e)
		k.mu.Unlock()
		return nil, false
	}
	k.mu.Unlock()
	return k.unlocker(key, e), true
}

func (k *Mutex) unlocker(key string, e *entry) func() {
	return func() {
		e.Unlock()
		k.mu.Lock()
		k.release(key, e)
		k.mu.Unlock()
	}
}

// release drops a reference; the caller holds k.mu.
func (k *Mutex) release(key string, e *entry) {
	if e.refs--; e.refs == 0 {
		delete(k.m, key)
	}
}

// Len is how many keys are held or waited for (tests).
func (k *Mutex) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.m)
}
