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
	// noted are texts a transaction ran unprepared, to prepare once it
	// ended (see cached).
	noted map[string]bool
}

func newStmtCache(db *sql.DB) *stmtCache {
	return &stmtCache{db: db, m: make(map[string]*sql.Stmt), noted: make(map[string]bool)}
}

// cached returns q's statement when it is prepared already. Otherwise it
// notes q for prepareNoted and returns nil: inside a transaction on
// SQLite's single write connection, preparing on the pool would wait for
// the connection the transaction holds.
func (c *stmtCache) cached(q string) *sql.Stmt {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.m[q]
	if !ok && len(c.m)+len(c.noted) < maxCachedStmts {
		c.noted[q] = true
	}
	return st
}

// prepareNoted prepares what cached noted; run it when no transaction
// holds the pool's connection.
func (c *stmtCache) prepareNoted(ctx context.Context) {
	if c == nil {
		return
	}
	c.mu.Lock()
	var qs []string
	for q := range c.noted {
		qs = append(qs, q)
	}
	clear(c.noted)
	c.mu.Unlock()
	for _, q := range qs {
		c.get(ctx, q)
	}
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

// txQuery, txQueryRow and txExec run q in tx (a transaction of the write
// pool, see inTx) with its cached statement when there is one.
func (s *sqlStore) txQuery(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.wStmts.cached(q); st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

func (s *sqlStore) txQueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.wStmts.cached(q); st != nil {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, q, args...)
}

func (s *sqlStore) txExec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	ctx = s.stmtCtx(ctx)
	q = s.d.rebind(q)
	if st := s.wStmts.cached(q); st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}
