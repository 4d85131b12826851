package smtpupstream

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// DefaultReadyIdle is how long a ready connection waits for a login
// before it is closed unused, when Options.ReadyIdle is zero (Postfix
// drops a silent client after smtpd_timeout, 300 s by default).
const DefaultReadyIdle = 30 * time.Second

// ready keeps a few upstream connections open, greeted, protected by TLS
// (as configured) and past EHLO, unused and carrying nothing of any
// client, so that Dial hands one out at once: the client's address goes
// in XCLIENT, at Login. A connection taken is replaced, so the set
// follows the logins: with none for the idle time, it is empty. With
// forward_client "proxy" (the header must be a connection's first bytes)
// there is no ready set at all.
type ready struct {
	c    *Client
	size int
	idle time.Duration
	ctx  context.Context // ends with close: stops the openings under way
	stop context.CancelFunc

	mu      sync.Mutex
	conns   []*readyConn
	opening int // openings under way
	closed  bool
	wg      sync.WaitGroup
}

// readyConn is one connection of the ready set.
type readyConn struct {
	p     *Pending
	timer *time.Timer // closes it unused after the idle time
}

func newReady(c *Client, size int, idle time.Duration) *ready {
	ctx, stop := context.WithCancel(context.Background())
	return &ready{c: c, size: size, idle: idle, ctx: ctx, stop: stop}
}

// take returns a ready connection that still looks open, or nil when
// there is none, and starts opening replacements.
func (r *ready) take() *Pending {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	var p *Pending
	for p == nil && len(r.conns) > 0 {
		n := len(r.conns)
		rc := r.conns[n-1] // the newest
		r.conns = r.conns[:n-1]
		if !rc.timer.Stop() {
			continue // its idle time ran out just now: the timer closes it
		}
		if rc.p.br.Buffered() > 0 || !quiet(rc.p.raw) {
			// The server closed it or spoke unasked (421 on a timeout).
			_ = rc.p.raw.Close()
			continue
		}
		p = rc.p
	}
	for len(r.conns)+r.opening < r.size {
		r.opening++
		r.wg.Add(1)
		go r.open()
	}
	return p
}

// open opens one connection on the first address that answers and adds
// it to the set. Failures are left to the logins, which report them.
func (r *ready) open() {
	defer r.wg.Done()
	c := r.c
	ctx, cancel := context.WithTimeout(r.ctx, c.o.DialTimeout+c.o.LoginTimeout)
	defer cancel()
	var p *Pending
	for _, addr := range c.o.Addresses {
		var err error
		if p, err = c.dialAt(ctx, addr, netip.AddrPort{}); err == nil || ctx.Err() != nil {
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.opening--
	if p == nil {
		return
	}
	if r.closed {
		p.Close()
		return
	}
	_ = p.conn.SetDeadline(time.Time{})
	p.ready = true
	rc := &readyConn{p: p}
	rc.timer = time.AfterFunc(r.idle, func() { r.expire(rc) })
	r.conns = append(r.conns, rc)
}

// expire closes rc unused (with QUIT: see Pending.Close), unless it was
// taken meanwhile.
func (r *ready) expire(rc *readyConn) {
	r.mu.Lock()
	for i, o := range r.conns {
		if o == rc {
			r.conns = append(r.conns[:i], r.conns[i+1:]...)
			break
		}
	}
	r.mu.Unlock()
	_ = rc.p.Close()
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
	for _, rc := range conns {
		rc.timer.Stop()
		_ = rc.p.Close()
	}
	r.wg.Wait()
}
