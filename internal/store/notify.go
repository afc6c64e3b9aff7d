package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// Notifier lets processes that share the database tell each other about
// changes that caches must see at once — a revoked token must stop working
// on every manager, not only the one that revoked it. On Postgres it is
// LISTEN/NOTIFY; on SQLite (one process) an in-process fan-out.
type Notifier interface {
	// Notify sends payload to every listener of channel, this process's too.
	Notify(ctx context.Context, channel, payload string) error
	// Listen calls fn for each notification on channel until ctx ends,
	// reconnecting after errors. It returns when ctx is done.
	Listen(ctx context.Context, channel string, fn func(payload string))
}

// localBus is the in-process fan-out.
type localBus struct {
	mu   sync.Mutex
	subs map[string][]chan string
}

func (b *localBus) publish(channel, payload string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ch := range b.subs[channel] {
		select {
		case ch <- payload:
		default: // a stuck listener must not block writers
		}
	}
}

func (b *localBus) subscribe(channel string) (<-chan string, func()) {
	ch := make(chan string, 256)
	b.mu.Lock()
	if b.subs == nil {
		b.subs = map[string][]chan string{}
	}
	b.subs[channel] = append(b.subs[channel], ch)
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		list := b.subs[channel]
		for i, c := range list {
			if c == ch {
				b.subs[channel] = append(list[:i], list[i+1:]...)
				break
			}
		}
	}
}

func validChannel(c string) bool {
	if c == "" || len(c) > 63 {
		return false
	}
	for _, r := range c {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func (s *sqlStore) Notify(ctx context.Context, channel, payload string) error {
	if !validChannel(channel) {
		return fmt.Errorf("notify %q: %w: channel must be [a-z0-9_]", channel, ErrInvalid)
	}
	if s.d.engine() != "postgres" {
		s.bus.publish(channel, payload)
		return nil
	}
	if _, err := s.w.ExecContext(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		return s.fail("notify "+channel, err)
	}
	return nil
}

func (s *sqlStore) Listen(ctx context.Context, channel string, fn func(payload string)) {
	if !validChannel(channel) {
		s.log.Error("listen: invalid channel", "channel", channel)
		return
	}
	if s.d.engine() != "postgres" {
		ch, cancel := s.bus.subscribe(channel)
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-ch:
				fn(p)
			}
		}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, channel, fn)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("listen: connection lost, reconnecting", "channel", channel, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// listenOnce holds one pooled connection in LISTEN until it fails or ctx ends.
func (s *sqlStore) listenOnce(ctx context.Context, channel string, fn func(string)) error {
	conn, err := s.w.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return errors.New("listen: not a pgx connection")
		}
		pc := sc.Conn()
		if _, err := pc.Exec(ctx, "LISTEN "+channel); err != nil {
			return err
		}
		defer func() {
			// The connection returns to the pool: stop listening on it.
			c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, _ = pc.Exec(c, "UNLISTEN "+channel)
		}()
		for {
			n, err := pc.WaitForNotification(ctx)
			if err != nil {
				return err
			}
			fn(n.Payload)
		}
	})
}
