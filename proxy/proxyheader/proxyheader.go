// Package proxyheader reads the PROXY protocol header (v1 or v2, parsed by
// github.com/pires/go-proxyproto) that a TCP load balancer such as HAProxy
// sends ahead of its client's bytes, so that the listeners, the decision,
// the audit trail and the upstream see the client's address instead of
// the balancer's.
//
// Peers in the configured networks (policy.proxy_networks, within
// policy.trusted_networks) must send a header, read within a timeout
// before the listener sees the connection, on a goroutine of its own (one
// slow peer never holds up Accept). Reading it "if
// present" instead would fail both ways where the server speaks first: a
// client that sends nothing would wait for the timeout, and a late header
// would be taken for protocol bytes from a trusted address. Any other
// peer's connection is handed over untouched: a header it sends is just
// bytes of the protocol, which the listener refuses.
//
// A header that names no client (LOCAL in v2, UNKNOWN in v1: a health
// check, or an address the balancer cannot express) gives the connection
// 0.0.0.0:0, never the balancer's own trusted address. A peer that closes
// without sending anything (a TCP health check) is dropped quietly.
package proxyheader

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/passgate/passgate/proxy/relay"
)

// DefaultTimeout bounds the wait for a header.
const DefaultTimeout = 10 * time.Second

// Options configures Listen.
type Options struct {
	// From lists the peers that send a header (the load balancers).
	From []netip.Prefix
	// Timeout bounds the wait for a header; 0 means DefaultTimeout.
	Timeout time.Duration
	// Logger receives refused connections; nil discards.
	Logger *slog.Logger
	// OnRefused, when set, learns of every connection closed for want of
	// a valid header (for metrics; a quiet health check is not one). It
	// must not block.
	OnRefused func()
}

// Listen returns ln, wrapped so that connections from opts.From have
// their header read before Accept returns them, with the client's
// address as RemoteAddr. Without opts.From it returns ln itself.
func Listen(ln net.Listener, opts Options) net.Listener {
	if len(opts.From) == 0 {
		return ln
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l := &listener{Listener: ln, opts: opts, ready: make(chan accepted), done: make(chan struct{})}
	go l.loop()
	return l
}

type accepted struct {
	c   net.Conn
	err error
}

type listener struct {
	net.Listener
	opts      Options
	ready     chan accepted
	done      chan struct{}
	closeOnce sync.Once
}

// Accept returns the next connection whose header, if its peer must send
// one, has been read.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case a := <-l.ready:
		return a.c, a.err
	case <-l.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
}

// Close closes the listener; connections whose header is still being
// read are closed as they finish.
func (l *listener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

func (l *listener) loop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !l.hand(accepted{err: err}) || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !l.fromProxy(c.RemoteAddr()) {
			if !l.hand(accepted{c: c}) {
				c.Close()
				return
			}
			continue
		}
		go func() {
			switch pc, err := l.readHeader(c); {
			case errors.Is(err, io.EOF):
				l.opts.Logger.Debug("proxy_networks peer closed without a header (a TCP health check)", slog.String("peer", c.RemoteAddr().String()))
				c.Close()
			case err != nil:
				if l.opts.OnRefused != nil {
					l.opts.OnRefused()
				}
				l.opts.Logger.Warn("connection from a proxy_networks peer closed: no valid PROXY protocol header",
					slog.String("peer", c.RemoteAddr().String()), slog.Any("err", err),
					slog.String("fix", "make the load balancer send the PROXY protocol (HAProxy: send-proxy or send-proxy-v2 on the server line), or remove its address from policy.proxy_networks"))
				c.Close()
			case !l.hand(accepted{c: pc}):
				pc.Close()
			}
		}()
	}
}

// hand gives a to Accept; false when the listener was closed first.
func (l *listener) hand(a accepted) bool {
	select {
	case l.ready <- a:
		return true
	case <-l.done:
		return false
	}
}

func (l *listener) fromProxy(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	return err == nil && slices.ContainsFunc(l.opts.From, func(p netip.Prefix) bool { return p.Contains(ap.Addr().Unmap()) })
}

// readHeader reads c's header and returns c with the client's address.
func (l *listener) readHeader(c net.Conn) (net.Conn, error) {
	if err := c.SetReadDeadline(time.Now().Add(l.opts.Timeout)); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	if _, err := br.Peek(1); err != nil {
		// io.EOF: closed without a byte (a TCP health check).
		return nil, fmt.Errorf("proxyheader: read the header: %w", err)
	}
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, fmt.Errorf("proxyheader: read the header: %w", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	// No client named: an address that no trusted network contains
	// unless every address is trusted.
	unknown := &net.TCPAddr{IP: net.IPv4zero, Port: 0}
	out := &conn{Conn: relay.WithBuffered(c, br), remote: unknown, local: c.LocalAddr()}
	if h.Command.IsProxy() && h.TransportProtocol != proxyproto.UNSPEC {
		src, srcOK := h.SourceAddr.(*net.TCPAddr)
		dst, dstOK := h.DestinationAddr.(*net.TCPAddr)
		if !srcOK || !dstOK {
			return nil, fmt.Errorf("proxyheader: the header names a connection that is not TCP (transport %#x)", byte(h.TransportProtocol))
		}
		out.remote, out.local = src, dst
	}
	return out, nil
}

// conn is a connection whose header was read, with the addresses the
// header names; its reads drain what the header's reader buffered past
// the header first (relay.WithBuffered).
type conn struct {
	net.Conn
	remote, local net.Addr
}

func (c *conn) RemoteAddr() net.Addr { return c.remote }
func (c *conn) LocalAddr() net.Addr  { return c.local }

// SyscallConn hands out the socket under c once the header's reader has
// nothing left buffered, so that a relay can wait for a logged-in
// session's next bytes on the socket itself (syscall.Conn, as
// *net.TCPConn); before that it fails.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("proxyheader: the connection has no socket to hand out")
	}
	return sc.SyscallConn()
}
