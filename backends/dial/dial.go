// Package dial opens the connection to an upstream server, written once
// for backends/imapupstream, backends/smtpupstream and backends/verify:
// the addresses tried in order, the PROXY v2 header that carries the real
// client's address, and TLS (implicit, or the handshake after a
// protocol's STARTTLS) with the certificate checked against each
// address's host; and Ready, the set of connections that the IMAP and
// SMTP upstreams open ahead of any client and hand out to logins.
//
// On the path of a login it is the first step of the upstream login. It knows no protocol: STARTTLS itself, greetings and
// logins stay in the upstream packages. It imports no passgate package
// but backends/sockwire, which imports none.
package dial

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/passgate/passgate/backends/sockwire"
)

// Values of Options.TLS.
const (
	TLSNone     = "none"
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
)

// DefaultTimeout bounds one TCP connection attempt when Options.Timeout
// is zero.
const DefaultTimeout = 5 * time.Second

// Options says how to reach one upstream service.
type Options struct {
	// TLS is TLSNone, TLSStartTLS (the caller runs the protocol's
	// STARTTLS, then Handshake) or TLSImplicit (Dial runs the handshake).
	TLS string
	// TLSConfig verifies the upstream's certificate (RootCAs; nil: the
	// system roots). When ServerName is empty, the host of each address
	// is checked. It is cloned, never modified.
	TLSConfig *tls.Config
	// Timeout bounds the TCP connect; default DefaultTimeout.
	// HandshakeTimeout bounds what Dial does next, the PROXY header and
	// the implicit-TLS handshake; default Timeout.
	Timeout, HandshakeTimeout time.Duration
	// Proxy sends a PROXY v2 header with the client's address first.
	Proxy bool
}

// Dialer connects to upstream addresses. It is safe for concurrent use.
type Dialer struct {
	o    Options
	base *tls.Config // with TLS 1.2 at least and a session cache
}

// New returns a Dialer for o. sessions sizes the TLS session cache
// (resumed handshakes make repeated logins cheaper; the certificate was
// verified on the full handshake).
func New(o Options, sessions int) *Dialer {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = o.Timeout
	}
	base := &tls.Config{}
	if o.TLSConfig != nil {
		base = o.TLSConfig.Clone()
	}
	if base.MinVersion == 0 {
		base.MinVersion = tls.VersionTLS12
	}
	if base.ClientSessionCache == nil {
		base.ClientSessionCache = tls.NewLRUClientSessionCache(max(sessions, 1))
	}
	return &Dialer{o: o, base: base}
}

// TLSConfig is the client configuration for addr: ServerName is addr's
// host unless Options.TLSConfig names one.
func (d *Dialer) TLSConfig(addr string) *tls.Config {
	cfg := d.base
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	return cfg
}

// Handshake runs the TLS client handshake on conn, connected to addr,
// verifying the upstream's certificate. It blocks until ctx ends at most.
func (d *Dialer) Handshake(ctx context.Context, conn net.Conn, addr string) (*tls.Conn, error) {
	tc := tls.Client(conn, d.TLSConfig(addr))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake (check the upstream's ca_file and server_name): %w", err)
	}
	return tc, nil
}

// Dial connects to addr, sends the PROXY header for client when so
// configured (passgate's own address when client is not valid), and runs
// the implicit-TLS handshake when so configured. It returns the
// connection to speak on (the TCP connection read and written as a
// sockwire.Socket, or the TLS connection over that when TLS is implicit)
// and the TCP connection under it, for its socket options and deadlines. The connect is bounded by Options.Timeout, the
// rest by HandshakeTimeout, all by ctx; the caller sets its own deadlines
// afterwards.
func (d *Dialer) Dial(ctx context.Context, addr string, client netip.AddrPort) (conn, raw net.Conn, err error) {
	nd := net.Dialer{Timeout: d.o.Timeout}
	tcp, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	defer func() {
		if err != nil {
			tcp.Close()
		}
	}()
	_ = tcp.SetDeadline(time.Now().Add(d.o.HandshakeTimeout))
	if d.o.Proxy {
		if err := writeProxyHeader(tcp, client); err != nil {
			return nil, nil, err
		}
	}
	// The connection is read and written with raw system calls
	// (sockwire.Socket): a login's exchanges with the upstream, each a
	// few small writes and reads with waits between them, then do not
	// wake the runtime's monitor thread out of its sleep at each call
	// (what that costs: the sockwire package comment).
	sock := sockwire.NewSocket(tcp, nil)
	if d.o.TLS != TLSImplicit {
		return sock, tcp, nil
	}
	hctx, cancel := context.WithTimeout(ctx, d.o.HandshakeTimeout)
	defer cancel()
	tc, err := d.Handshake(hctx, sock, addr)
	if err != nil {
		return nil, nil, err
	}
	return tc, tcp, nil
}

// writeProxyHeader sends a PROXY v2 header from src (passgate's own
// address when not valid) to the upstream's address, in src's family.
func writeProxyHeader(conn net.Conn, src netip.AddrPort) error {
	if !src.IsValid() {
		if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
			src = la.AddrPort()
		}
	}
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst, ok := conn.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return errors.New("send PROXY header: the upstream connection is not TCP")
	}
	dstIP := dst.IP
	if src.Addr().Is4() {
		if v4 := dstIP.To4(); v4 != nil {
			dstIP = v4
		}
	} else if dstIP.To4() != nil {
		dstIP = dstIP.To16()
	}
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(src), &net.TCPAddr{IP: dstIP, Port: dst.Port})
	if _, err := h.WriteTo(conn); err != nil {
		return fmt.Errorf("send PROXY v2 header: %w", err)
	}
	return nil
}

// Each calls try with each address in turn until one succeeds, ctx ends,
// or final reports that an error must not be retried on the next address
// (a refusal of the credentials): it then returns that error alone. Else
// it returns the errors of every address tried, each prefixed with its
// address, joined.
func Each[T any](ctx context.Context, addrs []string, try func(addr string) (T, error), final func(error) bool) (T, error) {
	var zero T
	var errs []error
	for _, addr := range addrs {
		v, err := try(addr)
		if err == nil {
			return v, nil
		}
		if final != nil && final(err) {
			return zero, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	return zero, errors.Join(errs...)
}

// Bound bounds an exchange on conn: its deadline is timeout from now, and
// moves into the past as soon as ctx ends, so that a blocked read or
// write returns at once. The returned stop ends the latter; it reports
// false when ctx had already ended.
func Bound(ctx context.Context, conn net.Conn, timeout time.Duration) (stop func() bool) {
	_ = conn.SetDeadline(time.Now().Add(timeout))
	return context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
}
