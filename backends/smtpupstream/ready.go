package smtpupstream

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/passgate/passgate/backends/dial"
)

// DefaultReadyIdle is how long a ready connection waits for a login
// before it is closed unused, when Options.ReadyIdle is zero (Postfix
// drops a silent client after smtpd_timeout, 300 s by default).
const DefaultReadyIdle = 30 * time.Second

// newReady returns the ready set of c (Options.Ready, a dial.Ready):
// size connections open, greeted, protected by TLS (as configured) and
// past EHLO, unused and carrying nothing of any client, so that Dial
// hands one out at once; the client's address goes in XCLIENT, at Login.
// One unused for idle is closed with QUIT (see Pending.Close); one that
// the server closed or spoke on unasked (421 on a timeout) is passed over
// at Take. With forward_client "proxy" (the header must be a connection's
// first bytes) there is no ready set at all.
func newReady(c *Client, size int, idle time.Duration) *dial.Ready[*Pending] {
	return dial.NewReady(dial.ReadyOptions[*Pending]{
		Size:        size,
		Idle:        idle,
		OpenTimeout: c.o.DialTimeout + c.o.LoginTimeout,
		Open: func(ctx context.Context) (*Pending, error) {
			err := errors.New("smtpupstream: no upstream address")
			for _, addr := range c.o.Addresses {
				var p *Pending
				if p, err = c.dialAt(ctx, addr, netip.AddrPort{}); err == nil {
					_ = p.conn.SetDeadline(time.Time{})
					p.ready = true
					return p, nil
				}
				if ctx.Err() != nil {
					break
				}
			}
			return nil, err
		},
		Close:  func(p *Pending) { _ = p.Close() },
		Usable: func(p *Pending) bool { return p.br.Buffered() == 0 && dial.Quiet(p.raw) },
	})
}
