// Package policytest helps the listeners' tests run the real decision
// (policy.Engine) over a store they describe in a few lines, and checks
// that every Login those tests start is finished.
//
// It sits beside policy and is imported only by tests.
package policytest

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
)

// Store is a policy.Store whose login states come from State; audit
// events go to OnRecord when set, last uses nowhere.
type Store struct {
	State    func(user, secret string) (store.LoginState, error)
	OnRecord func(store.AuditEvent)
}

// LoginState calls s.State.
func (s Store) LoginState(_ context.Context, user, secret string) (store.LoginState, error) {
	return s.State(user, secret)
}

// RecordLogin records the event.
func (s Store) RecordLogin(ctx context.Context, _ int64, _ store.Usage, ev store.AuditEvent) error {
	return s.Record(ctx, ev)
}

// Record passes the event to OnRecord.
func (s Store) Record(_ context.Context, ev store.AuditEvent) error {
	if s.OnRecord != nil {
		s.OnRecord(ev)
	}
	return nil
}

// App is an app password of the state a StoreFunc returns: all scopes,
// no expiry.
func App(id int64, user, label string) *store.AppPassword {
	return &store.AppPassword{ID: id, User: user, Label: label, Scopes: store.AllScopes()}
}

// Normalize folds a secret as app passwords are compared: spaces out,
// lower case.
func Normalize(secret string) string {
	return strings.ToLower(strings.ReplaceAll(secret, " ", ""))
}

// Engines makes engines for one test and, when the test ends, checks
// that every Login they returned was finished: a listener that forgot one
// fails its test.
type Engines struct {
	mu   sync.Mutex
	list []*policy.Engine
}

// NewEngines returns Engines whose check runs at t's cleanup, after the
// cleanups registered later (the servers' Close) have run.
func NewEngines(t testing.TB) *Engines {
	e := &Engines{}
	t.Cleanup(func() {
		deadline := time.Now().Add(30 * time.Second)
		for e.InFlight() != 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := e.InFlight(); n != 0 {
			t.Errorf("policytest: %d Logins were never finished", n)
		}
	})
	return e
}

// New returns a policy.Engine made with opts, checked at cleanup.
func (e *Engines) New(opts policy.Options) *policy.Engine {
	en := policy.New(opts)
	e.mu.Lock()
	e.list = append(e.list, en)
	e.mu.Unlock()
	return en
}

// InFlight is the number of Logins not finished yet, over every engine.
func (e *Engines) InFlight() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, en := range e.list {
		n += en.InFlight()
	}
	return n
}

// Delay is Options.FailureDelay for a test's delay: 0 means none (in
// policy.Options 0 means the default).
func Delay(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
