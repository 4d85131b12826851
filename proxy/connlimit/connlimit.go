// Package connlimit caps the connections that have not logged in yet,
// per client address (an IPv6 address counts as its /64) and in total,
// across every protocol listener that shares one Limiter, in the spirit
// of Dovecot's mail_max_userip_connections and nginx's limit_conn.
//
// On the path of a login it is the first step: Listen wraps a listener
// (after the PROXY header, so the client's address counts) and refuses a
// connection over a cap politely (the protocol's refusal, then closing)
// before the front ever sees it. A front calls LoggedIn once a login
// succeeds: the session then counts no more, so that logged-in sessions
// (an office's many IMAP connections behind one address) are never
// capped here. It imports no passgate package.
package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Limits are the caps; 0 means none.
type Limits struct {
	PerAddress int // connections before login from one address (IPv6: /64)
	Total      int // connections before login in all
}

// Reasons a connection is refused, for metrics.
const (
	ReasonAddress = "per_address"
	ReasonTotal   = "total"
)

// Limiter counts the connections before login. It is safe for concurrent
// use; share one between the listeners of every protocol.
type Limiter struct {
	lim   Limits
	mu    sync.Mutex
	per   map[netip.Prefix]int
	total int
}

// New returns a Limiter with lim.
func New(lim Limits) *Limiter {
	return &Limiter{lim: lim, per: make(map[netip.Prefix]int)}
}

// source is what a connection counts under: an IPv4 address, the /64 of
// an IPv6 one.
func source(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

// acquire counts a connection from src, or returns why it may not.
func (l *Limiter) acquire(src netip.Prefix) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lim.Total > 0 && l.total >= l.lim.Total {
		return ReasonTotal
	}
	if l.lim.PerAddress > 0 && l.per[src] >= l.lim.PerAddress {
		return ReasonAddress
	}
	l.total++
	l.per[src]++
	return ""
}

func (l *Limiter) release(src netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if n := l.per[src] - 1; n > 0 {
		l.per[src] = n
	} else {
		delete(l.per, src)
	}
}

// PreLogin returns the number of connections counted now.
func (l *Limiter) PreLogin() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Options configures Listen.
type Options struct {
	// Refusal is written to a refused connection before it is closed:
	// "* BYE …" for IMAP, "421 …" for SMTP, a notice of disconnection
	// for LDAP. nil (an implicit-TLS listener, which would need a
	// handshake first) closes at once.
	Refusal []byte
	// OnRefused learns each refusal and its reason (ReasonAddress,
	// ReasonTotal). It must not block.
	OnRefused func(reason string)
}

// refusalTimeout bounds writing a refusal to a client that does not read.
const refusalTimeout = 5 * time.Second

// Listen returns ln with l's caps: Accept returns only connections
// within them; the others get o.Refusal and are closed, off the accept
// loop. A nil l returns ln itself.
func Listen(ln net.Listener, l *Limiter, o Options) net.Listener {
	if l == nil {
		return ln
	}
	return &listener{Listener: ln, l: l, o: o}
}

type listener struct {
	net.Listener
	l *Limiter
	o Options
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var src netip.Prefix
		if ap, perr := netip.ParseAddrPort(c.RemoteAddr().String()); perr == nil {
			src = source(ap.Addr())
		}
		why := ln.l.acquire(src)
		if why == "" {
			return &conn{Conn: c, l: ln.l, src: src}, nil
		}
		if ln.o.OnRefused != nil {
			ln.o.OnRefused(why)
		}
		go func() {
			if ln.o.Refusal != nil {
				c.SetWriteDeadline(time.Now().Add(refusalTimeout))
				c.Write(ln.o.Refusal)
			}
			c.Close()
		}()
	}
}

// conn is a connection counted until it logs in or closes.
type conn struct {
	net.Conn
	l    *Limiter
	src  netip.Prefix
	once sync.Once
}

func (c *conn) done() { c.once.Do(func() { c.l.release(c.src) }) }

// Close closes the connection and ends its count.
func (c *conn) Close() error {
	c.done()
	return c.Conn.Close()
}

// LoggedIn ends the connection's count: it is a session now.
func (c *conn) LoggedIn() { c.done() }

// SyscallConn hands out the socket under c, whose bytes c does not
// change, so that a front or relay can read and write the socket itself
// (syscall.Conn, as *net.TCPConn: the LDAP listener's sockwire.Socket,
// the IMAP relay's waits for a logged-in session's next bytes); it
// fails over a connection that has no socket to hand out.
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errNoSocket
	}
	return sc.SyscallConn()
}

// errNoSocket: the wrapped connection hands out no socket.
var errNoSocket = errors.New("connlimit: the connection has no socket to hand out")

// LoggedIn tells the Limiter that c, a connection that Listen's Accept
// returned (or a *tls.Conn over one), has logged in: it counts no more.
// It does nothing for any other connection, and a second call does
// nothing.
func LoggedIn(c net.Conn) {
	for c != nil {
		switch v := c.(type) {
		case interface{ LoggedIn() }:
			v.LoggedIn()
			return
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return
		}
	}
}
