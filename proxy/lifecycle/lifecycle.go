// Package lifecycle is the life of a front server, written once for every
// listener (proxy/imapfront, proxy/smtpfront, proxy/ldapfront, and the
// portal's web server): the listeners it serves, the connections it
// tracks, and the stop in two steps of design's style §5 — Shutdown stops
// accepting and drains until its context ends, Close ends everything now —
// with every connection goroutine waited for.
//
// On the path of a login it is the first step, the accept loop; it knows
// no protocol: a front says how to serve, drain and close one of its
// connections. It also declares, once for every front, the decision as a
// front calls it (Decider). It imports only policy and proxy/observe.
package lifecycle

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/observe"
)

// Decider is the decision as every front calls it; *policy.Engine
// implements it. Every Login it returns is finished by the front.
type Decider interface {
	// Decide decides one attempt; an error means no decision could be
	// made (the Login then finishes as a temporary failure).
	Decide(ctx context.Context, a policy.Attempt) (*policy.Login, error)
	// Undecided is a Login the front ends without a decision: a
	// malformed exchange, a name that maps to no user, an upstream down
	// before the decision.
	Undecided(a policy.Attempt, reason string) *policy.Login
	// PlaintextAllowed reports whether client may send a password on a
	// connection without TLS.
	PlaintextAllowed(client netip.AddrPort, tls bool) bool
}

// Set is the listeners and live connections of one server. The zero
// value is ready to use; it must not be copied.
type Set[C comparable] struct {
	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[C]struct{}
	wg        sync.WaitGroup
}

// Add tracks c, and reports false (tracking nothing) once the server is
// closing. Every Add that reports true is matched by one Done.
func (s *Set[C]) Add(c C) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.conns == nil {
		s.conns = make(map[C]struct{})
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// Done stops tracking c, whose goroutine is ending.
func (s *Set[C]) Done(c C) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Closing reports whether Stop was called.
func (s *Set[C]) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Live returns the connections tracked now.
func (s *Set[C]) Live() []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.conns))
}

// Stop stops accepting: the server is closing from now on, and every
// listener being served is closed. It returns the live connections.
func (s *Set[C]) Stop() []C {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()
	return s.Live()
}

// Wait waits until every tracked connection is done, or ctx ends (then it
// returns ctx's error; the connections are left as they are).
func (s *Set[C]) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// listen records ln as served; false when the server is closing.
func (s *Set[C]) listen(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Set[C]) unlisten(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
}

// Loop is how Serve runs one front's connections.
type Loop[C comparable] struct {
	Name   string        // the package, for errors: "imapfront"
	Closed error         // what Serve returns after Stop
	Conns  observe.Conns // learns opens and closes; may be nil
	// New makes the connection of an accepted net.Conn.
	New func(net.Conn) C
	// Run serves c until it ends.
	Run func(c C)
	// Hand, when set, replaces Run: it serves c, and may hand c on to
	// goroutines of its own (a relay) and return before c ends. c stays
	// live until done is called, once, from any goroutine. A panic of
	// Hand ends c as one of Run's does.
	Hand func(c C, done func())
	// Panicked is called, on c's goroutine, with a panic of Run and its
	// stack: log it and close c. The server goes on.
	Panicked func(c C, r any, stack []byte)
	// Retry learns a passing accept error, which is retried.
	Retry func(err error)
}

// Serve accepts connections on ln and runs each on its own goroutine,
// tracked in s, until s.Stop; it then returns l.Closed. Any other accept
// error is returned wrapped. ln is closed when Serve returns.
func Serve[C comparable](s *Set[C], ln net.Listener, l Loop[C]) error {
	if !s.listen(ln) {
		ln.Close()
		return l.Closed
	}
	defer func() {
		s.unlisten(ln)
		ln.Close()
	}()
	for {
		nc, err := acceptConn(ln, s.Closing, l.Retry)
		if err != nil {
			if s.Closing() {
				return l.Closed
			}
			return fmt.Errorf("%s: accept on %s: %w", l.Name, ln.Addr(), err)
		}
		c := l.New(nc)
		if !s.Add(c) {
			nc.Close()
			return l.Closed
		}
		observe.Opened(l.Conns)
		go func() {
			var once sync.Once
			done := func() {
				once.Do(func() {
					observe.Closed(l.Conns)
					s.Done(c)
				})
			}
			defer func() {
				r := recover()
				if r != nil && l.Panicked != nil {
					l.Panicked(c, r, debug.Stack())
				}
				if r != nil || l.Hand == nil {
					done()
				}
			}()
			if l.Hand != nil {
				l.Hand(c, done)
				return
			}
			l.Run(c)
		}()
	}
}

// Drain stops accepting and then, every interval, calls drain for each
// live connection (which ends those it can: a greeting not yet answered,
// a session with nothing in flight), until none is left — it returns nil
// — or ctx ends — it returns ctx's error and leaves the rest open for
// Close.
func Drain[C comparable](ctx context.Context, s *Set[C], interval time.Duration, drain func(C)) error {
	s.Stop()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		live := s.Live()
		if len(live) == 0 {
			return s.Wait(ctx)
		}
		for _, c := range live {
			drain(c)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Close stops accepting, calls end for every live connection and waits
// for their goroutines, up to ctx.
func Close[C comparable](ctx context.Context, s *Set[C], end func(C)) error {
	for _, c := range s.Stop() {
		end(c)
	}
	return s.Wait(ctx)
}
