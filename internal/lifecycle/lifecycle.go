// Package lifecycle joins the long-lived goroutines of a process: each
// belongs to a Group, and whoever owns what they use (a store, a netlink
// handle) waits for the group before releasing it.
package lifecycle

import (
	"context"
	"sync"
)

// Group is a set of goroutines that run until their context ends. Unlike a
// bare sync.WaitGroup it is safe to start one while another goroutine may
// be waiting: once Wait has begun, Go runs nothing and says so.
type Group struct {
	mu      sync.Mutex
	wg      sync.WaitGroup
	closing bool
}

// Go runs f on its own goroutine as a member of the group. It reports
// false, and does not run f, once Wait has begun.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.wg.Go(f)
	return true
}

// Wait closes the group to new members and waits until every member has
// returned or ctx ends; it reports whether all returned.
func (g *Group) Wait(ctx context.Context) bool {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
