// Package imapupstream logs in to the upstream IMAP server (Dovecot) on a
// user's behalf, after the decision in policy/ has allowed the login.
//
// On the path of a login it comes third: the listener in proxy/ has read the
// client's credentials, the decision has allowed them, and Login now opens
// a connection to the first upstream address that answers, forwards the
// real client address (IMAP ID or a PROXY v2 header), protects the
// connection (STARTTLS or implicit TLS, certificate verified), and logs in
// as a master user or with the client's own credentials. The connection it
// returns is positioned just after the upstream's tagged OK, ready for the
// byte relay in proxy/relay.
//
// The listener may also open the connection before the decision
// (Open, which sends nothing but the connection's set-up) and log in on it
// once the decision allows the login (Pending.Login), or close it
// (Pending.Close); Options.Ready keeps a few connections greeted ahead of
// the logins for Open to hand out.
//
// It speaks IMAP on the raw connection with a small reader of its own
// (greeting, untagged and tagged lines, literals in untagged responses),
// because go-imap's imapclient keeps its own reader goroutine on the
// connection and cannot hand the connection over to a relay.
//
// It imports no other passgate package.
package imapupstream

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/dial"
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
	LoginPassthrough = "passthrough"
)

// Values of Options.MasterStyle.
const (
	MasterAuthzid   = "authzid"
	MasterSeparator = "separator"
)

// Values of Options.ForwardClient.
const (
	ForwardID    = "id"
	ForwardProxy = "proxy"
	ForwardNone  = "none"
)

// DefaultDialTimeout bounds one TCP connection attempt when
// Options.DialTimeout is zero.
const DefaultDialTimeout = dial.DefaultTimeout

// loginTimeout bounds the whole exchange with one address after the TCP
// connection is up: greeting, STARTTLS, ID and login. Dovecot holds the
// answer to every login from an address that failed recently for up to
// 15 s, correct ones included; the bound is well past that, so that such
// a login is slow rather than refused as a temporary failure.
const loginTimeout = 30 * time.Second

// configHint is appended to unavailability errors for the operator.
const configHint = "imap.upstream.addresses in the configuration; check that the IMAP server listens there and that imap.upstream.tls and ca_file match it"

// ErrRefused means the upstream refused the credentials: a tagged NO or
// BAD to LOGIN or AUTHENTICATE (other than NO [UNAVAILABLE]). The client
// must get passgate's uniform failure, never the upstream's text.
var ErrRefused = errors.New("imapupstream: the upstream refused the login")

// Options configures an Upstream. The zero value of an optional field
// selects its default, named on the field.
type Options struct {
	// Addresses are host:port pairs tried in order until one answers.
	// Required.
	Addresses []string
	// TLS is how the connection to the upstream is protected: "none"
	// (default), "starttls" or "implicit".
	TLS string
	// TLSConfig verifies the upstream's certificate (RootCAs from
	// ca_file, ServerName). Nil means the system roots. When ServerName is
	// empty, the host of each address is checked. It is cloned, never
	// modified.
	TLSConfig *tls.Config
	// Login is "master" (default: log in as MasterUser on the user's
	// behalf) or "passthrough" (the client's own credentials).
	Login string
	// MasterUser and MasterPassword are the master user's credentials;
	// required when Login is "master".
	MasterUser, MasterPassword string
	// MasterStyle is "authzid" (default: AUTHENTICATE PLAIN with
	// authzid = user, authcid = master) or "separator" (LOGIN
	// "user<Separator>master").
	MasterStyle string
	// Separator joins user and master in the "separator" style; default "*".
	Separator string
	// ForwardClient is how the real client address reaches the upstream:
	// "id" (IMAP ID x-originating-ip/port; Dovecot honours it from
	// login_trusted_networks), "proxy" (a PROXY v2 header before the
	// greeting) or "none" (default).
	ForwardClient string
	// DialTimeout bounds each TCP connection attempt; default 5s.
	DialTimeout time.Duration
	// Ready is how many connections Open keeps open, greeted, protected
	// as TLS says and unused, to hand one out at once: the client's
	// address (ID) and the login go on it after the hand-out. Each one
	// taken is replaced; each one left unused for ReadyIdle (default
	// DefaultReadyIdle) is closed. 0 (default) keeps none; with
	// ForwardClient "proxy" none is kept either, as the PROXY header must
	// be the first bytes of a connection made for its client. Close
	// closes them.
	Ready     int
	ReadyIdle time.Duration
	// Logger receives one line per failed address; nil discards. It never
	// receives a secret.
	Logger *slog.Logger
}

// Upstream logs in to one upstream IMAP service, which may have several
// addresses. It is safe for concurrent use.
type Upstream struct {
	opts  Options
	log   *slog.Logger
	d     *dial.Dialer
	ready *dial.Ready[*readyConn] // nil: no ready connections
}

// New checks opts and returns an Upstream. It does not dial.
func New(opts Options) (*Upstream, error) {
	var errs []error
	if len(opts.Addresses) == 0 {
		errs = append(errs, errors.New("imap.upstream.addresses is empty; list at least one host:port of the IMAP server"))
	}
	for _, a := range opts.Addresses {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("imap.upstream.addresses (%q): not host:port: %w", a, err))
		}
	}
	if opts.TLS == "" {
		opts.TLS = TLSNone
	}
	switch opts.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		errs = append(errs, fmt.Errorf("imap.upstream.tls (%q): must be none, starttls or implicit", opts.TLS))
	}
	if opts.Login == "" {
		opts.Login = LoginMaster
	}
	switch opts.Login {
	case LoginPassthrough:
	case LoginMaster:
		if opts.MasterUser == "" || opts.MasterPassword == "" {
			errs = append(errs, errors.New("imap.upstream.login (master): master_user and master_password_file must be set"))
		}
	default:
		errs = append(errs, fmt.Errorf("imap.upstream.login (%q): must be master or passthrough", opts.Login))
	}
	if opts.MasterStyle == "" {
		opts.MasterStyle = MasterAuthzid
	}
	switch opts.MasterStyle {
	case MasterAuthzid, MasterSeparator:
	default:
		errs = append(errs, fmt.Errorf("imap.upstream.master_style (%q): must be authzid or separator", opts.MasterStyle))
	}
	if opts.Separator == "" {
		opts.Separator = "*"
	}
	if opts.ForwardClient == "" {
		opts.ForwardClient = ForwardNone
	}
	switch opts.ForwardClient {
	case ForwardID, ForwardProxy, ForwardNone:
	default:
		errs = append(errs, fmt.Errorf("imap.upstream.forward_client (%q): must be id, proxy or none", opts.ForwardClient))
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("imapupstream: configuration: %w", errors.Join(errs...))
	}
	opts.Addresses = append([]string(nil), opts.Addresses...)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := dial.New(dial.Options{TLS: opts.TLS, TLSConfig: opts.TLSConfig, Timeout: opts.DialTimeout, HandshakeTimeout: loginTimeout,
		Proxy: opts.ForwardClient == ForwardProxy}, len(opts.Addresses)*4)
	u := &Upstream{opts: opts, log: log, d: d}
	if opts.Ready > 0 && opts.ForwardClient != ForwardProxy {
		u.ready = newReady(u, opts.Ready, cmp.Or(opts.ReadyIdle, DefaultReadyIdle))
	}
	return u, nil
}

// Close closes the ready connections (Options.Ready) and waits for those
// being opened. Logins and their connections are not affected; Open no
// longer keeps connections ready afterwards.
func (u *Upstream) Close() error {
	if u.ready != nil {
		u.ready.Close()
	}
	return nil
}

// Request is one login to perform upstream.
type Request struct {
	// User is the login name the upstream knows.
	User string
	// Password, when non-empty, makes this a passthrough login with the
	// client's primary password, whatever Options.Login says. It is
	// required when Options.Login is "passthrough".
	Password string
	// Client is the real client's address, forwarded as
	// Options.ForwardClient says; the zero value forwards nothing.
	Client netip.AddrPort
	// ClientID holds the key/value pairs of the client's own ID command,
	// if it sent one; keys starting with "x-" are never forwarded.
	ClientID []string
}

// Attempt is one address tried by Login and why it failed.
type Attempt struct {
	Address string
	Err     error
}

// UnavailableError means no upstream address answered. It lists each
// address tried and the cause, for the operator; the client gets a
// temporary failure (NO [UNAVAILABLE]).
type UnavailableError struct {
	Attempts []Attempt
}

// Error names every address and cause and the configuration key to check.
func (e *UnavailableError) Error() string {
	var b strings.Builder
	b.WriteString("imapupstream: no upstream IMAP server answered")
	for i, a := range e.Attempts {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%q: %v", a.Address, a.Err)
	}
	b.WriteString(" (")
	b.WriteString(configHint)
	b.WriteString(")")
	return b.String()
}

// Unwrap returns the cause of each attempt.
func (e *UnavailableError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts))
	for _, a := range e.Attempts {
		errs = append(errs, a.Err)
	}
	return errs
}

// Login opens a session on the first upstream address that answers and
// logs in there as r.User. It blocks for at most DialTimeout plus the login
// timeout per address, less when ctx ends.
//
// On success the connection is positioned after the upstream's tagged OK
// (bytes the upstream sent after it are kept and read first), and okText
// is the tagged line without its tag, e.g. "OK [CAPABILITY …] Logged in".
// The caller owns the connection and must close it.
//
// A refusal of the credentials returns an error matching ErrRefused and
// does not try further addresses. Any other failure is a
// *UnavailableError listing each address tried. A login without the
// client's password in passthrough mode (an app password, which the
// upstream cannot know) is a refusal too, without dialling.
func (u *Upstream) Login(ctx context.Context, r Request) (net.Conn, string, error) {
	cmd, err := u.loginCommand(r)
	if err != nil {
		return nil, "", err
	}
	return u.loginFrom(ctx, 0, r, cmd, &UnavailableError{})
}

// Open prepares a login whose credentials are still being decided: it
// connects to the first upstream address that answers (sending the PROXY
// header with the client's address when so configured), protects the
// connection as Options.TLS says, learns the upstream's capabilities, and
// queues the ID command that forwards the client's address (with
// clientID, the key/value pairs of the client's own ID), which goes out
// with the login command in one write and not at all when the login is
// refused. It sends no credentials of any kind. The listener calls it before the decision,
// so that an upstream that cannot be reached is known before any secret
// is decided, and the connection is ready when the decision allows the
// login.
//
// The returned Pending must be logged in (Pending.Login) or closed
// (Pending.Close). When no address answers, Open returns a
// *UnavailableError listing each address tried, as Login would.
func (u *Upstream) Open(ctx context.Context, client netip.AddrPort, clientID []string) (*Pending, error) {
	if p, ok := u.OpenReady(ctx, client, clientID); ok {
		return p, nil
	}
	// None ready, or the one taken broke: open one.
	r := Request{Client: client, ClientID: clientID}
	unavail := &UnavailableError{}
	for i, addr := range u.opts.Addresses {
		if err := ctx.Err(); err != nil {
			unavail.Attempts = append(unavail.Attempts, Attempt{Address: addr, Err: fmt.Errorf("not tried: %w", err)})
			continue
		}
		s, raw, err := u.openAt(ctx, addr, r)
		if err == nil {
			return &Pending{u: u, r: r, index: i, s: s, raw: raw, failed: unavail}, nil
		}
		u.failed(ctx, addr, err)
		unavail.Attempts = append(unavail.Attempts, Attempt{Address: addr, Err: err})
	}
	return nil, unavail
}

// OpenReady is Open without a wait for the upstream: it hands out a
// connection of the ready set (Options.Ready), introduced for the client as
// Open introduces it (no I/O: the ID is queued for the login's write), and
// reports false when none is ready (it then starts opening a replacement
// and leaves the rest to Open). A ready connection that the upstream
// closed or spoke on meanwhile is passed over (see usable); one dropped
// without a word fails at Pending.Login, which then logs in on a new
// one. A listener calls it
// on its own goroutine before the decision, and Open on another one only
// when it reports false, so that a login that finds a ready connection
// needs no hand-off between goroutines.
func (u *Upstream) OpenReady(ctx context.Context, client netip.AddrPort, clientID []string) (*Pending, bool) {
	if u.ready == nil {
		return nil, false
	}
	c, ok := u.ready.Take()
	if !ok {
		return nil, false
	}
	r := Request{Client: client, ClientID: clientID}
	u.introduce(c.s, c.raw, r)
	return &Pending{u: u, r: r, index: c.index, s: c.s, raw: c.raw, failed: &UnavailableError{}, ready: true}, true
}

// Pending is an upstream connection that Open set up and that has not
// logged in: nothing but the connection's set-up has been sent. It is
// used by one goroutine: Login or Close, once.
type Pending struct {
	u      *Upstream
	r      Request           // the client's address and ID, without credentials
	index  int               // of the address connected to, in Options.Addresses
	s      *session          // the conversation, with any ID answer still to read
	raw    net.Conn          // the TCP connection under s
	failed *UnavailableError // the addresses before index, which did not answer
	ready  bool              // s was opened ahead of any client (Options.Ready)
	done   bool              // Login or Close was called
}

// Login logs in on the pending connection as user, with password for a
// passthrough login (see Request.Password), and returns what
// Upstream.Login returns. When the connection fails for another reason
// than a refusal of the credentials, the login goes on with the next
// addresses, as Upstream.Login does; a refusal closes the connection and
// is returned at once.
func (p *Pending) Login(ctx context.Context, user, password string) (net.Conn, string, error) {
	if p.done {
		return nil, "", errors.New("imapupstream: login on a pending connection used already")
	}
	p.done = true
	r := p.r
	r.User, r.Password = user, password
	cmd, err := p.u.loginCommand(r)
	if err != nil {
		p.s.conn.Close()
		return nil, "", err
	}
	addr := p.u.opts.Addresses[p.index]
	conn, okText, err := p.u.finish(ctx, p.s, p.raw, cmd)
	if err == nil {
		return conn, okText, nil
	}
	if errors.Is(err, ErrRefused) {
		return nil, "", fmt.Errorf("imapupstream: %q: %w", addr, err)
	}
	if p.ready {
		// A ready connection may have been dropped by the upstream
		// while it waited (a restart): try its address anew.
		p.u.log.LogAttrs(ctx, slog.LevelDebug, "ready upstream connection failed; logging in on a new one",
			slog.String("proto", "imap"), slog.String("upstream", addr), slog.String("err", err.Error()))
		return p.u.loginFrom(ctx, p.index, r, cmd, p.failed)
	}
	p.u.failed(ctx, addr, err)
	p.failed.Attempts = append(p.failed.Attempts, Attempt{Address: addr, Err: err})
	return p.u.loginFrom(ctx, p.index+1, r, cmd, p.failed)
}

// Close closes a pending connection that is not going to log in, without
// a word to the upstream (the TCP connection is closed under any TLS, so
// not even a TLS alert is sent). It does nothing after Login.
func (p *Pending) Close() error {
	if p.done {
		return nil
	}
	p.done = true
	return p.raw.Close()
}

// loginCommand checks r against the options and builds its login command.
func (u *Upstream) loginCommand(r Request) (*command, error) {
	passthrough := r.Password != "" || u.opts.Login == LoginPassthrough
	if passthrough && r.Password == "" {
		return nil, fmt.Errorf("imapupstream: login: imap.upstream.login is passthrough, which needs the client's own password (an app password cannot be passed through; use login: master): %w", ErrRefused)
	}
	if !passthrough && u.opts.MasterStyle == MasterSeparator && strings.Contains(r.User, u.opts.Separator) {
		return nil, fmt.Errorf("imapupstream: login: the user name contains the master separator %q: %w", u.opts.Separator, ErrRefused)
	}
	return u.buildCommand(r, passthrough)
}

// loginFrom tries the addresses from index first on, each with a whole
// exchange, after the failures already in unavail.
func (u *Upstream) loginFrom(ctx context.Context, first int, r Request, cmd *command, unavail *UnavailableError) (net.Conn, string, error) {
	for _, addr := range u.opts.Addresses[first:] {
		if err := ctx.Err(); err != nil {
			unavail.Attempts = append(unavail.Attempts, Attempt{Address: addr, Err: fmt.Errorf("not tried: %w", err)})
			continue
		}
		conn, okText, err := u.loginAt(ctx, addr, r, cmd)
		if err == nil {
			return conn, okText, nil
		}
		if errors.Is(err, ErrRefused) {
			return nil, "", fmt.Errorf("imapupstream: %q: %w", addr, err)
		}
		u.failed(ctx, addr, err)
		unavail.Attempts = append(unavail.Attempts, Attempt{Address: addr, Err: err})
	}
	return nil, "", unavail
}

// failed logs an address that did not answer. A connection given up
// because its login ended first (a refused login abandons the connection
// opened while the decision ran; the client went away) is no failure of
// the upstream: it is logged at debug level, so that operators are not
// sent looking for an outage that was none.
func (u *Upstream) failed(ctx context.Context, addr string, err error) {
	level := slog.LevelWarn
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		level = slog.LevelDebug
	}
	u.log.LogAttrs(ctx, level, "upstream login failed",
		slog.String("proto", "imap"), slog.String("upstream", addr), slog.String("err", err.Error()))
}

// loginAt runs the whole exchange with one address.
func (u *Upstream) loginAt(ctx context.Context, addr string, r Request, cmd *command) (net.Conn, string, error) {
	s, raw, err := u.openAt(ctx, addr, r)
	if err != nil {
		return nil, "", err
	}
	return u.finish(ctx, s, raw, cmd)
}

// openAt runs the exchange with one address up to the login: connectAt,
// then introduce. On error it has closed the connection.
func (u *Upstream) openAt(ctx context.Context, addr string, r Request) (*session, net.Conn, error) {
	s, raw, err := u.connectAt(ctx, addr, r.Client)
	if err != nil {
		return nil, nil, err
	}
	u.introduce(s, raw, r)
	return s, raw, nil
}

// connectAt connects to addr (with the PROXY header for client when so
// configured), reads the greeting, runs STARTTLS when so configured and
// asks for the capabilities when they are not known yet. It returns the
// session and the TCP connection under it, whose deadline it clears; on
// error it has closed the connection. Nothing of a login is sent.
func (u *Upstream) connectAt(ctx context.Context, addr string, client netip.AddrPort) (_ *session, _ net.Conn, err error) {
	conn, raw, err := u.d.Dial(ctx, addr, client)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	defer bound(ctx, raw, &err)()

	s := newSession(conn)
	if err := s.greeting(); err != nil {
		return nil, nil, err
	}
	if u.opts.TLS == TLSStartTLS {
		if err := s.startTLS(); err != nil {
			return nil, nil, err
		}
		tc, err := u.d.Handshake(ctx, conn, addr)
		if err != nil {
			return nil, nil, err
		}
		s = newSession(tc)
	}
	if s.caps == nil {
		s.queue([]byte("CAPABILITY"))
		if err := s.flushQueue(); err != nil {
			return nil, nil, err
		}
	}
	return s, raw, nil
}

// introduce queues the ID command that forwards the client's address, when
// so configured: it goes out with the login command in one write (ID
// first, so the upstream knows the client before the login), and never
// when the login is refused. Its answer is read with the login's.
func (u *Upstream) introduce(s *session, raw net.Conn, r Request) {
	if u.opts.ForwardClient == ForwardID {
		s.queue(idCommand(r, raw.LocalAddr()))
	}
}

// finish logs in on a session that openAt set up. On error it has closed
// the connection.
func (u *Upstream) finish(ctx context.Context, s *session, raw net.Conn, cmd *command) (_ net.Conn, _ string, err error) {
	defer func() {
		if err != nil {
			s.conn.Close()
		}
	}()
	defer bound(ctx, raw, &err)()
	okText, err := s.login(cmd)
	if err != nil {
		return nil, "", err
	}
	return s.handOver(), okText, nil
}

// bound bounds an exchange on raw by loginTimeout and ctx (cancelling ctx
// interrupts any blocked read or write at once, so that its error is the
// one reported). The function it returns, deferred, ends the bound and
// clears the deadline, and makes *err report ctx's end.
func bound(ctx context.Context, raw net.Conn, err *error) func() {
	stop := dial.Bound(ctx, raw, loginTimeout)
	return func() {
		if !stop() && *err == nil {
			*err = fmt.Errorf("login: %w", ctx.Err())
		}
		if *err != nil && ctx.Err() != nil && !errors.Is(*err, ctx.Err()) {
			*err = fmt.Errorf("%w (%w)", *err, ctx.Err())
		}
		if *err == nil {
			if e := raw.SetDeadline(time.Time{}); e != nil {
				*err = fmt.Errorf("clear deadline: %w", e)
			}
		}
	}
}
