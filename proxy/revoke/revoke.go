// Package revoke keeps the registry of live sessions by the app password
// they logged in with, so that deleting an app password closes every
// session that logged in with it, whatever its protocol (IMAP relays,
// SMTP and LDAP sessions).
//
// On the path of a login it sits after the upstream login: a listener
// tracks a session once it is logged in, and cmd wires the store's
// deletions (LISTEN/NOTIFY or polling, Watch) to Revoke. It imports no
// passgate package.
package revoke

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"
)

// ErrRevoked is the context cause of a session closed because its
// credential was deleted.
var ErrRevoked = errors.New("relay: credential revoked")

// Registry tracks live sessions by the app password they logged in with.
// The zero value is not usable; use NewRegistry.
type Registry struct {
	mu       sync.Mutex
	next     uint64
	sessions map[int64][]session // usually one per app password: a slice costs less than a map
}

// session is one tracked session: how to end it, and the key that its
// release finds it by.
type session struct {
	key    uint64
	cancel context.CancelCauseFunc
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{sessions: make(map[int64][]session)}
}

// Track registers a session that logged in with app password id and
// returns a context that is cancelled (cause ErrRevoked) when that app
// password is revoked, and a release func to call when the session ends.
// id 0 (primary password) is not tracked; the returned context is then
// derived from ctx only.
func (r *Registry) Track(ctx context.Context, id int64) (context.Context, func()) {
	cctx, cancel := context.WithCancelCause(ctx)
	release := r.Register(id, cancel)
	return cctx, func() {
		release()
		cancel(nil)
	}
}

// Register is Track for a session that has a context of its own to end:
// Revoke of id calls cancel with ErrRevoked. The release func forgets the
// session (it does not call cancel). id 0 (primary password) is not
// tracked.
func (r *Registry) Register(id int64, cancel context.CancelCauseFunc) (release func()) {
	if id == 0 {
		return func() {}
	}
	r.mu.Lock()
	r.next++
	key := r.next
	r.sessions[id] = append(r.sessions[id], session{key: key, cancel: cancel})
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		list := r.sessions[id]
		i := slices.IndexFunc(list, func(s session) bool { return s.key == key })
		if i < 0 {
			return // revoked meanwhile
		}
		if len(list) == 1 {
			delete(r.sessions, id)
			return
		}
		list[i] = list[len(list)-1]
		list[len(list)-1] = session{}
		r.sessions[id] = list[:len(list)-1]
	}
}

// Revoke closes every live session of app password id and returns how many
// there were.
func (r *Registry) Revoke(id int64) int {
	r.mu.Lock()
	list := r.sessions[id]
	delete(r.sessions, id)
	r.mu.Unlock()
	for _, s := range list {
		s.cancel(ErrRevoked)
	}
	return len(list)
}

// IDs returns the app password ids that have live sessions.
func (r *Registry) IDs() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Collect(maps.Keys(r.sessions))
}

// Len returns the number of live tracked sessions.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.sessions {
		n += len(m)
	}
	return n
}

// ExistsFunc reports which of ids still exist in the store.
type ExistsFunc func(ctx context.Context, ids []int64) (map[int64]bool, error)

// Watch polls exists every interval and revokes the sessions of app
// passwords that no longer exist, until ctx ends. It works the same for
// every store and every passgate instance that shares one: a deletion made
// by the command line or another instance closes the sessions here within
// one interval. Errors are passed to onErr (which may be nil) and the
// sessions are kept: a store outage does not cut every session.
func (r *Registry) Watch(ctx context.Context, interval time.Duration, exists ExistsFunc, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, interval*4)
		err := r.Poll(qctx, exists)
		cancel()
		if err != nil && onErr != nil {
			onErr(err)
		}
	}
}

// Poll asks exists once about the app passwords that have live sessions
// and revokes those that no longer exist. On an error it keeps them all.
// Watch polls on a timer; a store that announces deletions (PostgreSQL's
// LISTEN/NOTIFY) polls once after its connection came back, since what
// was announced meanwhile is lost.
func (r *Registry) Poll(ctx context.Context, exists ExistsFunc) error {
	ids := r.IDs()
	if len(ids) == 0 {
		return nil
	}
	alive, err := exists(ctx, ids)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if !alive[id] {
			r.Revoke(id)
		}
	}
	return nil
}
