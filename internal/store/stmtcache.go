package store

import (
	"context"
	"database/sql"
	"sync"
)

// maxCachedStmts bounds a pool's cache: query texts are the package's
// constants, but a few are composed per call (IN lists, filters), and those
// past the bound are prepared each time as before.
const maxCachedStmts = 512

// stmtCache keeps one prepared statement per query text for one pool.
// SQLite (modernc) prepares a statement at every call otherwise, which was
// about a seventh of the manager's CPU per create; database/sql prepares a
// cached statement once on each connection that runs it. Postgres needs
// none: pgx caches statements per connection itself.
type stmtCache struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, m: make(map[string]*sql.Stmt)}
}

// get returns the statement for q, prepared on first use, or nil when it
// cannot be cached (the cache is full, or q does not prepare: the caller
// runs q unprepared and gets the engine's own error).
func (c *stmtCache) get(ctx context.Context, q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	st, ok := c.m[q]
	full := len(c.m) >= maxCachedStmts
	c.mu.Unlock()
	if ok || full {
		return st
	}
	// Prepared without the lock: a busy connection must not hold up
	// callers of other statements.
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.m[q]; ok {
		st.Close() // another caller prepared it meanwhile
		return prev
	}
	if len(c.m) >= maxCachedStmts {
		st.Close()
		return nil
	}
	c.m[q] = st
	return st
}
