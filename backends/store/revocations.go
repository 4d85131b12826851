package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/lib/pq"
)

// revocationChannel is the PostgreSQL channel on which a trigger
// announces every deleted app password's id (migration 0006).
const revocationChannel = "passgate_revoked"

// ErrNotSupported is returned by ListenRevocations on a store that cannot
// announce deletions (SQLite: poll ExistingAppPasswords instead).
var ErrNotSupported = errors.New("not supported by this store")

// Reconnection bounds of the revocation listener, and how often an idle
// listener checks that its connection is alive.
const (
	listenMinReconnect = 50 * time.Millisecond
	listenMaxReconnect = 5 * time.Second
	listenPing         = 30 * time.Second
)

// ListenRevocations calls revoked with the id of every app password that
// any instance or command deletes, as the deletion commits, until ctx
// ends. It calls connected each time the notification connection is
// (re-)established, the first time included: notifications sent while it
// was down are lost, so the caller polls once then (ExistingAppPasswords).
// A lost connection is re-established by itself, within about 5 s of the
// database coming back; errors on the way go to onErr (which may be nil).
// It returns ErrNotSupported at once on SQLite.
func (s *Store) ListenRevocations(ctx context.Context, revoked func(id int64), connected func(), onErr func(error)) error {
	if s.driver != DriverPostgres {
		return fmt.Errorf("store: listen for revocations: %w (polling instead)", ErrNotSupported)
	}
	l := pq.NewListener(s.opts.DSN, listenMinReconnect, listenMaxReconnect, func(_ pq.ListenerEventType, err error) {
		if err != nil && onErr != nil {
			onErr(fmt.Errorf("store: revocation listener: %w", err))
		}
	})
	defer l.Close()
	// Listen returns once LISTEN is in effect.
	if err := l.Listen(revocationChannel); err != nil {
		return fmt.Errorf("store: listen for revocations on %s: %w", describeDSN(s.driver, s.opts.DSN), err)
	}
	connected()
	ping := time.NewTicker(listenPing)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-l.Notify:
			if n == nil { // re-established: what was sent meanwhile is lost
				connected()
				continue
			}
			if id, err := strconv.ParseInt(n.Extra, 10, 64); err == nil {
				revoked(id)
			}
		case <-ping.C:
			// A dead connection is noticed only when used.
			go func() { _ = l.Ping() }()
		}
	}
}
