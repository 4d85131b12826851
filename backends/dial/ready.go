package dial

import (
	"context"
	"sync"
	"time"
)

// ReadyOptions configure a Ready set.
type ReadyOptions[C any] struct {
	// Size is how many connections are kept ready.
	Size int
	// Idle is how long a connection waits for a login before it is
	// closed unused (the upstream would drop it after its own timeout).
	Idle time.Duration
	// OpenTimeout bounds one opening.
	OpenTimeout time.Duration
	// Open opens one connection, on the first address that answers; it
	// must send nothing of any client. Its failures are left to the
	// logins, which dial anew and report them.
	Open func(ctx context.Context) (C, error)
	// Close closes a connection unused.
	Close func(C)
	// Usable, when set, is asked at Take: a connection it refuses (the
	// server closed it or spoke unasked) is closed and passed over.
	Usable func(C) bool
}

// Ready keeps a few upstream connections open, set up and unused, so
// that a login takes one at once instead of dialling. A connection taken
// is replaced, so the set follows the logins: with none for Idle, it is
// empty. The backends build it with their own Open, which carries nothing
// of any client: what a client's login needs goes out after Take.
type Ready[C any] struct {
	o    ReadyOptions[C]
	ctx  context.Context // ends with Close: stops the openings under way
	stop context.CancelFunc

	mu      sync.Mutex
	conns   []*readyConn[C]
	opening int // openings under way
	closed  bool
	wg      sync.WaitGroup
}

// readyConn is one connection of the set.
type readyConn[C any] struct {
	c     C
	timer *time.Timer // closes it unused after the idle time
}

// NewReady returns an empty set; the first Take starts filling it.
func NewReady[C any](o ReadyOptions[C]) *Ready[C] {
	ctx, stop := context.WithCancel(context.Background())
	return &Ready[C]{o: o, ctx: ctx, stop: stop}
}

// Take returns the newest ready connection that is still usable, or ok
// false when there is none, and starts opening replacements.
func (r *Ready[C]) Take() (c C, ok bool) {
	var unusable []C
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return c, false
	}
	for !ok && len(r.conns) > 0 {
		n := len(r.conns)
		rc := r.conns[n-1]
		r.conns = r.conns[:n-1]
		if !rc.timer.Stop() {
			continue // its idle time ran out just now: the timer closes it
		}
		if r.o.Usable != nil && !r.o.Usable(rc.c) {
			unusable = append(unusable, rc.c)
			continue
		}
		c, ok = rc.c, true
	}
	for len(r.conns)+r.opening < r.o.Size {
		r.opening++
		r.wg.Add(1)
		go r.open()
	}
	r.mu.Unlock()
	for _, u := range unusable {
		r.o.Close(u)
	}
	return c, ok
}

// Len is the number of connections ready now.
func (r *Ready[C]) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// open opens one connection and adds it to the set.
func (r *Ready[C]) open() {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, r.o.OpenTimeout)
	defer cancel()
	c, err := r.o.Open(ctx)
	r.mu.Lock()
	r.opening--
	closed := r.closed
	if err == nil && !closed {
		rc := &readyConn[C]{c: c}
		rc.timer = time.AfterFunc(r.o.Idle, func() { r.expire(rc) })
		r.conns = append(r.conns, rc)
	}
	r.mu.Unlock()
	if err == nil && closed {
		r.o.Close(c)
	}
}

// expire closes rc unused, unless it was taken meanwhile.
func (r *Ready[C]) expire(rc *readyConn[C]) {
	r.mu.Lock()
	for i, o := range r.conns {
		if o == rc {
			r.conns = append(r.conns[:i], r.conns[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	r.o.Close(rc.c)
}

// Close closes every ready connection and waits for the openings under
// way to end; Take then returns none.
func (r *Ready[C]) Close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	r.stop()
	for _, rc := range conns {
		rc.timer.Stop()
		r.o.Close(rc.c)
	}
	r.wg.Wait()
}
