package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/pressly/goose/v3/lock"
)

// fileLocker is an exclusive flock on a file beside the database: goose's
// migration lock for SQLite (Postgres uses an advisory lock instead), and
// the turn of a process opening the database. A
// separate file, because closing any descriptor of the database file itself
// would drop SQLite's own POSIX locks.
type fileLocker struct {
	path string
	f    *os.File
}

var _ lock.Locker = (*fileLocker)(nil)

func (l *fileLocker) Lock(ctx context.Context, _ *sql.DB) error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			l.f = f
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", l.path, err)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			f.Close()
			return fmt.Errorf("lock %s: %w", l.path, err)
		}
	}
}

func (l *fileLocker) Unlock(context.Context, *sql.DB) error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the descriptor releases the flock
	l.f = nil
	return err
}
