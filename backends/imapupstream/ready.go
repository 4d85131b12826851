package imapupstream

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/passgate/passgate/backends/dial"
)

// DefaultReadyIdle is how long a ready connection waits for a login
// before it is closed unused, when Options.ReadyIdle is zero. Dovecot
// drops a connection that has not logged in after a minute or more.
const DefaultReadyIdle = 10 * time.Second

// readyConn is one connection of the ready set (Options.Ready, a
// dial.Ready): open, greeted (and protected by TLS, as configured) and
// unused. It never holds a connection made for a client: the client's ID
// is sent with the login, and with forward_client "proxy" (the header
// must be a connection's first bytes) there is no ready set at all.
type readyConn struct {
	index int // of its address in Options.Addresses
	s     *session
	raw   net.Conn
}

// newReady returns the ready set of u: size connections, each closed
// after idle unused.
func newReady(u *Upstream, size int, idle time.Duration) *dial.Ready[*readyConn] {
	return dial.NewReady(dial.ReadyOptions[*readyConn]{
		Size:        size,
		Idle:        idle,
		OpenTimeout: u.opts.DialTimeout + loginTimeout,
		Open: func(ctx context.Context) (*readyConn, error) {
			err := errors.New("imapupstream: no upstream address")
			for i, addr := range u.opts.Addresses {
				var s *session
				var raw net.Conn
				if s, raw, err = u.connectAt(ctx, addr, netip.AddrPort{}); err == nil {
					return &readyConn{index: i, s: s, raw: raw}, nil
				}
				if ctx.Err() != nil {
					break
				}
			}
			return nil, err
		},
		Close:  func(c *readyConn) { c.raw.Close() },
		Usable: usable,
	})
}

// usable reports whether a ready connection may be handed out: the
// upstream has neither closed it nor spoken on it unasked (Dovecot's
// "* BYE" before it drops an idle connection). One that fails only at
// the login fails after the decision has allowed the login, when a
// refused login got the uniform failure: with the upstream gone (a
// Dovecot stopped or restarted), passing such connections over lets the
// login open a new one before the decision, which fails alike for every
// secret. A server that vanished without closing (a host gone without a
// FIN, a hung Dovecot) still looks alive here.
func usable(c *readyConn) bool {
	return c.s.r.Buffered() == 0 && dial.Quiet(c.raw)
}
