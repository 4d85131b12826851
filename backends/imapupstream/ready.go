package imapupstream

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultReadyIdle is how long a ready connection waits for a login
// before it is closed unused, when Options.ReadyIdle is zero. Dovecot
// drops a connection that has not logged in after a minute or more.
const DefaultReadyIdle = 10 * time.Second

// ready keeps a few upstream connections open, greeted (and protected by
// TLS, as configured) and unused, so that Open hands one out at once. A
// connection taken is replaced, so the set follows the logins: with none
// for ReadyIdle, it is empty. It never holds a connection made for a
// client: the client's ID is sent after the hand-out, and with
// forward_client "proxy" (the header must be a connection's first bytes)
// there is no ready set at all.
type ready struct {
	u    *Upstream
	size int
	idle time.Duration
	ctx  context.Context // ends with Close: stops the openings under way
	stop context.CancelFunc

	mu      sync.Mutex
	conns   []*readyConn
	opening int // openings under way
	closed  bool
	wg      sync.WaitGroup
}

// readyConn is one connection of the ready set.
type readyConn struct {
	index int // of its address in Options.Addresses
	s     *session
	raw   net.Conn
	timer *time.Timer // closes it unused after the idle time
}

func newReady(u *Upstream, size int, idle time.Duration) *ready {
	ctx, stop := context.WithCancel(context.Background())
	return &ready{u: u, size: size, idle: idle, ctx: ctx, stop: stop}
}

// take returns a ready connection, or nil when there is none, and starts
// opening its replacement.
func (r *ready) take() *readyConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	var c *readyConn
	if n := len(r.conns); n > 0 {
		c = r.conns[n-1] // the newest
		r.conns = r.conns[:n-1]
	}
	for len(r.conns)+r.opening < r.size {
		r.opening++
		r.wg.Add(1)
		go r.open()
	}
	if c != nil && !c.timer.Stop() {
		return nil // its idle time ran out just now: the timer closes it
	}
	return c
}

// open opens one connection on the first address that answers and adds
// it to the set. Failures are left to the logins, which report them.
func (r *ready) open() {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(r.ctx, r.u.opts.DialTimeout+loginTimeout)
	defer cancel()
	var c *readyConn
	for i, addr := range r.u.opts.Addresses {
		s, raw, err := r.u.connectAt(ctx, addr, netip.AddrPort{})
		if err == nil {
			c = &readyConn{index: i, s: s, raw: raw}
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opening--
	if c == nil {
		return
	}
	if r.closed {
		c.raw.Close()
		return
	}
	c.timer = time.AfterFunc(r.idle, func() { r.expire(c) })
	r.conns = append(r.conns, c)
}

// expire closes c unused, unless it was taken meanwhile.
func (r *ready) expire(c *readyConn) {
	r.mu.Lock()
	for i, o := range r.conns {
		if o == c {
			r.conns = append(r.conns[:i], r.conns[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	c.raw.Close()
}

// close closes every ready connection and waits for the openings under
// way to end.
func (r *ready) close() {
	r.mu.Lock()
	r.closed = true
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	r.stop()
	for _, c := range conns {
		c.timer.Stop()
		c.raw.Close()
	}
	r.wg.Wait()
}
