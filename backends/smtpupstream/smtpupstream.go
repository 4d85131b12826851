// Package smtpupstream logs in to the organisation's submission server
// (Postfix, Dovecot submission, Exchange) on a user's behalf and carries
// the messages of one SMTP session to it.
//
// On the path of a login it comes after the decision: proxy/smtpfront has
// read the client's AUTH, policy has allowed it, and this package opens a
// connection to the upstream and logs in there in one of three ways:
//
//   - master: SASL PLAIN with authzid = the user and authcid = a master user
//     (Dovecot master users behind Postfix's SASL);
//   - xclient: Postfix's XCLIENT LOGIN= (and ADDR=, PORT= of the real
//     client), after STARTTLS and EHLO, so that Postfix treats the session
//     as the user's and logs the real client address;
//   - passthrough: the client's own AUTH PLAIN, only for primary-password
//     logins (the upstream then verifies the primary password).
//
// The connection is opened in two steps: Dial (connect, greeting, EHLO,
// STARTTLS) runs before the decision, so that an upstream that is down is
// found out whatever the client's secret, and Pending.Login then logs that
// same connection in once the decision has allowed the login. With
// Options.Ready, Dial hands out a connection opened ahead of the login
// (ready.go), so that the connect and TLS handshake are not on its path;
// it carries nothing of any client until Login.
//
// A primary-password login is always verified by the upstream with the
// user's own AUTH PLAIN, whatever the mode, so the upstream remains the
// judge of primary passwords. After login, the session is relayed command
// by command through go-smtp's client: never as raw bytes, so a client
// can never send its own XCLIENT to an upstream that trusts passgate.
//
// It imports no other passgate package.
package smtpupstream

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/backends/dial"
	"github.com/passgate/passgate/backends/secret"
)

// Values of Options.TLS.
const (
	TLSNone     = dial.TLSNone
	TLSStartTLS = dial.TLSStartTLS
	TLSImplicit = dial.TLSImplicit
)

// Values of Options.Login.
const (
	LoginMaster      = "master"
	LoginXClient     = "xclient"
	LoginPassthrough = "passthrough"
)

// Values of Options.ForwardClient.
const (
	ForwardXClient = "xclient"
	ForwardProxy   = "proxy"
	ForwardNone    = "none"
)

// Defaults of Options.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultLoginTimeout   = 30 * time.Second
	DefaultCommandTimeout = 5 * time.Minute
	DefaultLocalName      = "passgate"
)

// replyBuffer is the size of the buffer that reads the replies before
// login (greeting, EHLO, STARTTLS, XCLIENT): a few hundred bytes each.
const replyBuffer = 1024

// maxXClientLine is Postfix's limit on an XCLIENT command line.
const maxXClientLine = 512

// ErrAuthRefused is returned (wrapped) by Login when the upstream refused
// the credentials (535): a wrong primary password, or a master user or
// XCLIENT login the upstream did not accept. Other errors mean that the
// upstream could not be reached or misbehaved: a temporary failure.
var ErrAuthRefused = errors.New("smtpupstream: the submission server refused the login")

// ErrNoPassword is returned (wrapped) by Login in passthrough mode for a
// login without the user's own password (an app-password login): that
// mode cannot log in on the user's behalf.
var ErrNoPassword = errors.New("smtpupstream: passthrough login needs the user's own password; app-password logins need smtp.upstream.login master or xclient")

// Options configures a Client.
type Options struct {
	// Addresses are host:port of the submission server, tried in order.
	Addresses []string
	// TLS is TLSNone, TLSStartTLS (default) or TLSImplicit.
	TLS string
	// TLSConfig verifies the upstream's certificate (RootCAs; nil: system
	// roots). ServerName defaults to the host of each address.
	TLSConfig *tls.Config
	// Login is LoginMaster, LoginXClient (default) or LoginPassthrough.
	Login string
	// MasterUser and MasterPassword are the master user's credentials
	// (LoginMaster).
	MasterUser     string
	MasterPassword Password
	// ForwardClient is ForwardXClient (ADDR=/PORT= in XCLIENT),
	// ForwardProxy (a PROXY v2 header) or ForwardNone.
	ForwardClient string
	// DialTimeout bounds each TCP connect (default 5s); LoginTimeout the
	// whole login exchange with one address (default 30s); CommandTimeout
	// each command and each write of a message (default 5 min).
	DialTimeout, LoginTimeout, CommandTimeout time.Duration
	// LocalName is passgate's EHLO name before XCLIENT or STARTTLS
	// (default "passgate").
	LocalName string
	// Ready is how many connections Dial keeps open, greeted, past
	// STARTTLS and EHLO and unused, ahead of the logins: Dial hands one
	// out at once and opens its replacement, and each one left unused
	// for ReadyIdle (default DefaultReadyIdle) is closed. 0 (default)
	// keeps none; with ForwardProxy there are none either (the PROXY
	// header names the client at connect). Close closes them.
	Ready     int
	ReadyIdle time.Duration
}

// Client logs in to the upstream. It is safe for concurrent use: every
// Login opens its own connection.
type Client struct {
	o     Options
	d     *dial.Dialer
	ready *dial.Ready[*Pending] // nil without Options.Ready
	// bufs holds the buffers of messages relayed before, for the next
	// ones, shared by the sessions: a session holds none between its
	// messages. At most cap(bufs) are kept (a sync.Pool would lose them
	// at every other garbage collection, which runs often with the small
	// heap of a proxy).
	bufs chan *dataBufs
}

// keptDataBufs is how many Data buffers a Client keeps between messages
// (96 KiB each).
const keptDataBufs = 4

// dataBufs are the buffers one Data uses: what it reads of the message
// and its DATA encoding (twice that and a line end, at most).
type dataBufs struct{ in, out []byte }

// dataChunk is how much of a message Data reads at a time.
const dataChunk = 32 << 10

// New checks opts and returns a Client.
func New(o Options) (*Client, error) {
	if len(o.Addresses) == 0 {
		return nil, errors.New("smtpupstream: no address (set smtp.upstream.addresses)")
	}
	if o.TLS == "" {
		o.TLS = TLSStartTLS
	}
	if o.Login == "" {
		o.Login = LoginXClient
	}
	if o.ForwardClient == "" {
		o.ForwardClient = ForwardNone
	}
	switch o.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		return nil, fmt.Errorf("smtpupstream: tls %q: must be none, starttls or implicit (smtp.upstream.tls)", o.TLS)
	}
	switch o.Login {
	case LoginMaster:
		if o.MasterUser == "" || o.MasterPassword == "" {
			return nil, errors.New("smtpupstream: master login needs a master user and password (smtp.upstream.master_user, smtp.upstream.master_password_file)")
		}
	case LoginXClient, LoginPassthrough:
	default:
		return nil, fmt.Errorf("smtpupstream: login %q: must be master, xclient or passthrough (smtp.upstream.login)", o.Login)
	}
	switch o.ForwardClient {
	case ForwardXClient, ForwardProxy, ForwardNone:
	default:
		return nil, fmt.Errorf("smtpupstream: forward_client %q: must be xclient, proxy or none (smtp.upstream.forward_client)", o.ForwardClient)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = DefaultLoginTimeout
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = DefaultCommandTimeout
	}
	if o.LocalName == "" {
		o.LocalName = DefaultLocalName
	}
	o.Addresses = append([]string(nil), o.Addresses...)
	d := dial.New(dial.Options{TLS: o.TLS, TLSConfig: o.TLSConfig, Timeout: o.DialTimeout, HandshakeTimeout: o.LoginTimeout,
		Proxy: o.ForwardClient == ForwardProxy}, len(o.Addresses)*4)
	c := &Client{o: o, d: d}
	c.bufs = make(chan *dataBufs, keptDataBufs)
	if o.Ready > 0 && o.ForwardClient != ForwardProxy {
		if o.ReadyIdle <= 0 {
			o.ReadyIdle = DefaultReadyIdle
		}
		c.ready = newReady(c, o.Ready, o.ReadyIdle)
	}
	return c, nil
}

// Close closes the ready connections (Options.Ready) and waits for those
// being opened. Sessions and pending logins are not affected.
func (c *Client) Close() error {
	if c.ready != nil {
		c.ready.Close()
	}
	return nil
}

// Password is a secret (a master password or a user's own password):
// backends/secret's one redacting type, so that a Request or Options
// printed by mistake shows no secret.
type Password = secret.Secret

// Request is one login to make upstream.
type Request struct {
	User string
	// Password is the user's own password, set only for primary-password
	// logins: it is then verified by the upstream with AUTH PLAIN. Empty
	// for app-password logins, which use the configured mode.
	Password Password
	// Client is the real client's address, forwarded per ForwardClient.
	Client netip.AddrPort
	// Helo is the client's EHLO name, used as passgate's EHLO name once the
	// session is the user's.
	Helo string
}

// Login connects to the first address that answers and logs in: Dial and
// then Pending.Login. A refusal of the credentials wraps ErrAuthRefused
// and is not retried on the next address; any other failure tries the
// next address, and the error names every address tried.
func (c *Client) Login(ctx context.Context, req Request) (*Session, error) {
	s, err := dial.Each(ctx, c.o.Addresses, func(addr string) (*Session, error) {
		p, err := c.dialAt(ctx, addr, req.Client)
		if err != nil {
			return nil, err
		}
		return p.Login(ctx, req.User, req.Password, req.Helo)
	}, func(err error) bool { return errors.Is(err, ErrAuthRefused) || errors.Is(err, ErrNoPassword) })
	if err != nil && !errors.Is(err, ErrAuthRefused) && !errors.Is(err, ErrNoPassword) {
		return nil, fmt.Errorf("smtpupstream: login of %q: no submission server could be used (check smtp.upstream.addresses, smtp.upstream.tls and ca_file, and that the server listens there): %w",
			req.User, err)
	}
	return s, err
}

// Dial connects to the first address that answers its greeting and EHLO
// (and STARTTLS, when so configured), before anything about the login is
// known: proxy/smtpfront calls it before the decision, so that an
// unreachable upstream is found out the same way whatever the client's
// secret. client is the real client's address, forwarded per
// ForwardClient. The Pending connection is then logged in with Login or
// closed with Close; it must not wait longer than LoginTimeout. With
// Options.Ready it is a connection opened ahead, when one is ready and
// its server still answers a NOOP.
func (c *Client) Dial(ctx context.Context, client netip.AddrPort) (*Pending, error) {
	if c.ready != nil {
		if p, ok := c.ready.Take(); ok {
			if err := p.alive(ctx); err == nil {
				p.client = client
				return p, nil
			}
			// Its server no longer answers: try a new connection, which
			// reports what is wrong.
		}
	}
	p, err := dial.Each(ctx, c.o.Addresses, func(addr string) (*Pending, error) { return c.dialAt(ctx, addr, client) }, nil)
	if err != nil {
		return nil, fmt.Errorf("smtpupstream: no submission server answered (check smtp.upstream.addresses, smtp.upstream.tls and ca_file, and that the server listens there): %w", err)
	}
	return p, nil
}

// Pending is an upstream connection that has answered its greeting and
// EHLO (after STARTTLS when configured) and is not logged in yet.
type Pending struct {
	c      *Client
	conn   net.Conn
	raw    net.Conn // the TCP connection under conn
	br     *bufio.Reader
	ext    map[string]string
	addr   string
	client netip.AddrPort
	ready  bool // opened ahead of any client (Options.Ready)
}

// dialAt connects to addr and runs greeting, EHLO, [STARTTLS, EHLO] on
// the raw connection (go-smtp's client has no STARTTLS with a deadline).
func (c *Client) dialAt(ctx context.Context, addr string, client netip.AddrPort) (*Pending, error) {
	conn, raw, err := c.d.Dial(ctx, addr, client)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	stop := dial.Bound(ctx, conn, c.o.LoginTimeout) // on the conn under a later TLS layer
	defer stop()

	br := bufio.NewReaderSize(conn, replyBuffer)
	if c.o.TLS == TLSImplicit {
		// The greeting follows the server's session tickets: see ehlo.
		dial.QuickAck(raw)
	}
	rep, err := readReply(br)
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if rep.Code != 220 {
		return nil, fmt.Errorf("greeting: %s", rep)
	}
	ext, err := ehlo(conn, br, c.o.LocalName, nil)
	if err != nil {
		return nil, err
	}
	if c.o.TLS == TLSStartTLS {
		if _, ok := ext["STARTTLS"]; !ok {
			return nil, errors.New("the server does not offer STARTTLS (smtp.upstream.tls is starttls)")
		}
		if _, err := io.WriteString(conn, "STARTTLS\r\n"); err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		rep, err := readReply(br)
		if err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		if rep.Code != 220 {
			return nil, fmt.Errorf("STARTTLS: %s", rep)
		}
		if br.Buffered() > 0 {
			return nil, errors.New("STARTTLS: the server sent data before the TLS handshake")
		}
		tc, err := c.d.Handshake(ctx, conn, addr) // also bounded by the deadline
		if err != nil {
			return nil, fmt.Errorf("after STARTTLS: %w", err)
		}
		conn = tc
		br = bufio.NewReaderSize(conn, replyBuffer)
		if ext, err = ehlo(conn, br, c.o.LocalName, raw); err != nil {
			return nil, err
		}
	}
	ok = true
	return &Pending{c: c, conn: conn, raw: raw, br: br, ext: ext, addr: addr, client: client}, nil
}

// alive checks that the server of a ready connection still answers (a
// NOOP and its 250, which carry nothing of any client) before Dial hands
// the connection out. Dial runs before the decision: an upstream that is
// down must be found there, a host gone without a FIN or a hung server
// included, which the ready set's check of the socket cannot see; found
// only after the decision allowed a login, the client's reply would tell
// a right secret (unavailable) from a wrong one (refused). The wait is
// bounded by DialTimeout; on failure the connection is closed.
func (p *Pending) alive(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			_ = p.conn.Close()
		}
	}()
	stop := dial.Bound(ctx, p.conn, p.c.o.DialTimeout)
	if _, err = io.WriteString(p.conn, "NOOP\r\n"); err == nil {
		var rep reply
		if rep, err = readReply(p.br); err == nil && rep.Code != 250 {
			err = fmt.Errorf("NOOP: %s", rep)
		}
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("smtpupstream: %s: ready connection: %w", p.addr, err)
	}
	return p.conn.SetDeadline(time.Time{})
}

// Close closes a connection that was not logged in, after a QUIT that it
// does not wait for (the server then logs a clean disconnect, not a lost
// connection, which log watchers such as fail2ban count as an attack).
func (p *Pending) Close() error {
	_ = p.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(p.conn, "QUIT\r\n")
	return p.conn.Close()
}

// Login logs the pending connection in as user: with XCLIENT LOGIN= or
// the master user's AUTH PLAIN, or with the user's own AUTH PLAIN when
// password is set (a primary-password login, verified by the upstream).
// helo is the client's EHLO name, reused upstream when valid. Login may be
// called once; on failure the connection is closed. A refusal of the
// credentials wraps ErrAuthRefused. A connection that was kept ready and
// fails otherwise (the server may have dropped it meanwhile) is replaced
// by a new one to the same address, once.
func (p *Pending) Login(ctx context.Context, user string, password Password, helo string) (*Session, error) {
	s, err := p.login(ctx, user, password, helo)
	if err == nil || !p.ready || errors.Is(err, ErrAuthRefused) || errors.Is(err, ErrNoPassword) || ctx.Err() != nil {
		return s, err
	}
	fresh, derr := p.c.dialAt(ctx, p.addr, p.client)
	if derr != nil {
		return nil, fmt.Errorf("%w; a new connection: %w", err, derr)
	}
	return fresh.login(ctx, user, password, helo)
}

func (p *Pending) login(ctx context.Context, user string, password Password, helo string) (*Session, error) {
	c, conn, addr := p.c, p.conn, p.addr
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	stop := dial.Bound(ctx, conn, c.o.LoginTimeout) // on the conn under a later TLS layer
	defer stop()

	name := c.o.LocalName
	if validHelo(helo) {
		name = helo
	}
	if c.o.Login == LoginPassthrough && password == "" {
		return nil, ErrNoPassword
	}
	xLogin := c.o.Login == LoginXClient && password == ""
	xAddr := c.o.ForwardClient == ForwardXClient && p.client.IsValid()
	var attrs []string
	if xLogin {
		attrs = append(attrs, "LOGIN="+xtext(user))
	}
	if xAddr {
		a := p.client.Addr().Unmap()
		addrText := a.String()
		if a.Is6() {
			addrText = "IPV6:" + addrText
		}
		attrs = append(attrs, "ADDR="+xtext(addrText), "PORT="+strconv.Itoa(int(p.client.Port())))
	}
	var err error
	if len(attrs) > 0 {
		xc, err := p.xclient(attrs)
		if err != nil {
			return nil, err
		}
		conn = xc
	} else {
		if p.br.Buffered() > 0 {
			return nil, errors.New("the server sent data nobody asked for after EHLO")
		}
		// go-smtp's client reads a greeting first: give it one.
		conn = &replayConn{Conn: conn, pending: []byte("220 passgate greeting done\r\n")}
	}
	cl := smtp.NewClient(conn)
	cl.CommandTimeout = c.o.LoginTimeout
	if err := cl.Hello(name); err != nil {
		return nil, fmt.Errorf("greeting or EHLO: %w", err)
	}
	switch {
	case password != "":
		err = cl.Auth(sasl.NewPlainClient("", user, string(password)))
	case c.o.Login == LoginMaster:
		err = cl.Auth(sasl.NewPlainClient(user, c.o.MasterUser, string(c.o.MasterPassword)))
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == 535 {
			return nil, fmt.Errorf("%w: %s: AUTH PLAIN: %d %s", ErrAuthRefused, addr, se.Code, se.Message)
		}
		return nil, fmt.Errorf("smtpupstream: %s: AUTH PLAIN: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	cl.CommandTimeout = c.o.CommandTimeout
	s := &Session{cl: cl, conn: conn, addr: addr, timeout: c.o.CommandTimeout, bufs: c.bufs}
	if n, ok := cl.MaxMessageSize(); ok {
		s.size = int64(n)
		s.sizeKnown = true
	}
	ok = true
	return s, nil
}

// xclient sends XCLIENT with attrs and returns the connection with the
// upstream's 220 replayed for go-smtp's client to read as its greeting.
func (p *Pending) xclient(attrs []string) (net.Conn, error) {
	params, ok := p.ext["XCLIENT"]
	if !ok {
		return nil, errors.New("the server does not offer XCLIENT to passgate (Postfix: list passgate's address in smtpd_authorized_xclient_hosts)")
	}
	var names []string
	for _, a := range attrs {
		n, _, _ := strings.Cut(a, "=")
		names = append(names, n)
	}
	if missing := hasAttrs(params, names...); len(missing) > 0 {
		return nil, fmt.Errorf("the server's XCLIENT lacks %s (it offers %q)", strings.Join(missing, ", "), params)
	}
	line := "XCLIENT " + strings.Join(attrs, " ")
	if len(line) > maxXClientLine {
		return nil, fmt.Errorf("XCLIENT command longer than %d bytes (user name too long)", maxXClientLine)
	}
	if _, err := io.WriteString(p.conn, line+"\r\n"); err != nil {
		return nil, fmt.Errorf("XCLIENT: %w", err)
	}
	rep, err := readReply(p.br)
	if err != nil {
		return nil, fmt.Errorf("XCLIENT: %w", err)
	}
	if rep.Code != 220 {
		return nil, fmt.Errorf("XCLIENT refused: %s (Postfix: smtpd_authorized_xclient_hosts must list passgate's address)", rep)
	}
	// Replay the 220 (and anything already buffered) to go-smtp's client.
	var pending []byte
	for i, l := range rep.Lines {
		sep := "-"
		if i == len(rep.Lines)-1 {
			sep = " "
		}
		pending = append(pending, "220"+sep+l+"\r\n"...)
	}
	if n := p.br.Buffered(); n > 0 {
		b, _ := p.br.Peek(n)
		pending = append(pending, b...)
	}
	return &replayConn{Conn: p.conn, pending: pending}, nil
}

// ehlo sends EHLO name and reads the extensions the reply lists. When
// raw is set (the TCP connection under a TLS session that has just
// started), the reply is read with quick ACKs: Postfix writes its TLS 1.3
// session tickets after the handshake and its reply to EHLO after them,
// held by Nagle's algorithm until the tickets are acknowledged, which a
// delayed ACK would put off by 40 ms (see dial.QuickAck).
func ehlo(w io.Writer, br *bufio.Reader, name string, raw net.Conn) (map[string]string, error) {
	if _, err := io.WriteString(w, "EHLO "+name+"\r\n"); err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if raw != nil {
		dial.QuickAck(raw)
	}
	rep, err := readReply(br)
	if err != nil {
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	if rep.Code != 250 {
		return nil, fmt.Errorf("EHLO: %s", rep)
	}
	return extensions(rep), nil
}

// validHelo accepts a client's EHLO name for reuse upstream: printable
// ASCII without spaces, at most 255 bytes.
func validHelo(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// replayConn returns pending before reading from Conn, and sends what
// Data holds back (the end of a message, see holder) with its next
// write.
type replayConn struct {
	net.Conn
	pending []byte
	held    []byte // not owned: Data's buffer, until the next Write or drop
}

func (r *replayConn) hold(p []byte) { r.held = p }

// drop forgets what was held and not written (the message was aborted).
func (r *replayConn) drop() { r.held = nil }

// Write sends what was held and b in one write.
func (r *replayConn) Write(b []byte) (int, error) {
	if len(r.held) == 0 {
		return r.Conn.Write(b)
	}
	w := append(r.held, b...)
	r.held = nil
	n, err := r.Conn.Write(w)
	n -= len(w) - len(b)
	if n < 0 || err != nil {
		return max(n, 0), cmp.Or(err, io.ErrShortWrite)
	}
	return n, nil
}

func (r *replayConn) Read(b []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(b, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.Conn.Read(b)
}

// ProbeSize connects to the first address that answers, reads the SIZE its
// EHLO advertises and quits. ok is false when the server advertises none.
func (c *Client) ProbeSize(ctx context.Context) (size int64, ok bool, err error) {
	type probe struct {
		size int64
		ok   bool
	}
	p, err := dial.Each(ctx, c.o.Addresses, func(addr string) (probe, error) {
		size, ok, err := c.probeAt(ctx, addr)
		return probe{size, ok}, err
	}, nil)
	if err != nil {
		return 0, false, fmt.Errorf("smtpupstream: probe SIZE: no submission server answered (smtp.upstream.addresses): %w", err)
	}
	return p.size, p.ok, nil
}

func (c *Client) probeAt(ctx context.Context, addr string) (int64, bool, error) {
	conn, _, err := c.d.Dial(ctx, addr, netip.AddrPort{})
	if err != nil {
		return 0, false, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(c.o.LoginTimeout))
	cl := smtp.NewClient(conn)
	if err := cl.Hello(c.o.LocalName); err != nil {
		return 0, false, fmt.Errorf("EHLO: %w", err)
	}
	n, ok := cl.MaxMessageSize()
	_ = cl.Quit()
	return int64(n), ok, nil
}

// Session is one logged-in connection to the upstream. Its methods are
// go-smtp's client's, called by one goroutine at a time, except Close,
// which another goroutine may call to abort a running Data.
type Session struct {
	cl        *smtp.Client
	conn      net.Conn
	addr      string
	timeout   time.Duration
	size      int64
	sizeKnown bool
	bufs      chan *dataBufs // the Client's
}

// Addr is the upstream address the session is connected to.
func (s *Session) Addr() string { return s.addr }

// MaxMessageSize is the SIZE the upstream advertised after login.
func (s *Session) MaxMessageSize() (int64, bool) { return s.size, s.sizeKnown }

// Mail sends MAIL FROM. An upstream refusal is an *smtp.SMTPError.
func (s *Session) Mail(from string, opts *smtp.MailOptions) error {
	return s.cl.Mail(from, opts)
}

// Rcpt sends RCPT TO. An upstream refusal is an *smtp.SMTPError.
func (s *Session) Rcpt(to string, opts *smtp.RcptOptions) error {
	return s.cl.Rcpt(to, opts)
}

// Data streams the message from r to the upstream as it is read, in
// buffers of 32 KiB, and returns the bytes sent and the upstream's reply
// to the end of data (an *smtp.SMTPError when refused). If r fails (the
// client went away, or the message is too large), the upstream connection
// is closed so that no partial message is ever committed; the session is
// then unusable and r's error is returned.
//
// go-smtp sends DATA and reads the 354; the message itself is encoded by
// dotStuffer and written to the connection directly, and only its last
// line end goes through go-smtp's writer, whose Close ends the data and
// reads the reply. When r is a StuffedReader, the runs of lines it hands
// out are written as they are: the same bytes as dotStuffer's for them
// (r, not the upstream, still decides where the message ends).
func (s *Session) Data(r io.Reader) (int64, error) {
	w, err := s.cl.Data()
	if err != nil {
		return 0, err
	}
	var b *dataBufs
	select {
	case b = <-s.bufs:
	default:
		b = &dataBufs{in: make([]byte, dataChunk), out: make([]byte, 0, 2*dataChunk+2)}
	}
	defer func() {
		select {
		case s.bufs <- b:
		default:
		}
	}()
	if rc, ok := s.conn.(*replayConn); ok {
		defer rc.drop() // before b is kept for another message
	}
	n, err := stuffMessage(r, s.conn, w, b.in, &b.out, func() { _ = s.conn.SetWriteDeadline(time.Now().Add(s.timeout)) }, time.Now)
	if err != nil {
		s.conn.Close()
		var we *writeError
		if errors.As(err, &we) {
			return n, fmt.Errorf("smtpupstream: %s: write message: %w", s.addr, we.err)
		}
		return n, err
	}
	// The write deadline set for the message also bounds the write of
	// its end (and of the part held back with it) by Close.
	err = w.Close()
	_ = s.conn.SetWriteDeadline(time.Time{})
	return n, err
}

// Reset sends RSET.
func (s *Session) Reset() error { return s.cl.Reset() }

// Quit sends QUIT and closes the connection.
func (s *Session) Quit() error {
	_ = s.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := s.cl.Quit(); err != nil {
		s.cl.Close()
		return err
	}
	return nil
}

// Close closes the connection without QUIT.
func (s *Session) Close() error { return s.cl.Close() }
