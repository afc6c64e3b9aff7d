package manager

import (
	"sync"

	"github.com/nexus-microvm/nexus/internal/store"
)

// recentMax bounds the rows recentRows keeps: writes that follow one
// another closely (a boot's "record running", then its guest's readiness
// report) are what it is for, not a copy of the fleet.
const recentMax = 256

// recentRows keeps the VM rows this manager wrote last, so that the next
// write of one starts from it instead of reading it (store.UpdateVMFrom):
// a guest's readiness report, which comes just after its boot's last
// write, was a read and a write. A row another writer moved on since is
// caught by the store's generation check, and the write then reads it; a
// VM deleted since is not found there, as before.
type recentRows struct {
	mu    sync.Mutex
	rows  map[string]store.VM
	order []string // the ids of rows, oldest first
}

func newRecentRows() *recentRows { return &recentRows{rows: make(map[string]store.VM)} }

// put keeps a copy of vm, the row as written (a caller may change the
// one it holds), dropping the oldest past the bound. Two writes of one
// VM that come back out of order leave the older: the next write then
// takes one attempt more, as from any stale row.
func (r *recentRows) put(vm store.VM) {
	if r == nil || vm.ID == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.rows[vm.ID]; !ok {
		r.order = append(r.order, vm.ID)
	}
	r.rows[vm.ID] = vm.Clone()
	for len(r.rows) > recentMax {
		delete(r.rows, r.order[0])
		r.order = r.order[1:]
	}
}

// get returns the row last written for id, if kept.
func (r *recentRows) get(id string) (store.VM, bool) {
	if r == nil {
		return store.VM{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	vm, ok := r.rows[id]
	return vm, ok
}

// forget drops id's row (the VM is deleted).
func (r *recentRows) forget(id string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.rows[id]; !ok {
		return
	}
	delete(r.rows, id)
	for i, o := range r.order {
		if o == id {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
}
