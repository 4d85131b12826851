package smtpfront

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/connlimit"
)

// The replies passgate writes itself, each a fresh value (go-smtp and
// callers may keep or change what they get). Every failed AUTH gets
// errAuthInvalid, byte for byte, whatever the reason.
func errAuthInvalid() error { return reply(535, 5, 7, 8, "Authentication credentials invalid") }
func errAuthTemp() error    { return reply(454, 4, 7, 0, "Temporary authentication failure") }
func errAuthNeeded() error  { return reply(530, 5, 7, 0, "Authentication required") }
func errNeedTLS() error {
	return reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism")
}
func errTooMany() error {
	return reply(421, 4, 7, 0, "Too many commands before authentication, closing connection")
}
func errUpstreamGone() error {
	return reply(421, 4, 4, 2, "Connection to the mail server lost, try again later")
}
func errMessageRead() error {
	return reply(451, 4, 4, 2, "Error reading the message, try again later")
}

// reply builds a reply: its code, enhanced code (class.subject.detail) and
// text.
func reply(code, class, subject, detail int, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: msg}
}

// mechanisms returns the mechanisms offered, in the order clients see
// them.
func mechanisms() []string { return []string{sasl.Plain, sasl.Login} }

// session is the part of a connection that talks to the upstream: it
// exists from the first HELO/EHLO (and again after STARTTLS), logs in
// upstream at AUTH, and relays MAIL, RCPT, the message, RSET and QUIT
// command by command. It runs on the connection's goroutine only;
// Server.Close may close the upstream connection from its own
// (trackedConn.closeUpstream), which fails whatever the session is
// doing.
type session struct {
	s   *Server
	c   *conn
	tc  *trackedConn
	tls bool

	up    UpstreamSession // nil until AUTH succeeds, and after logout
	req   LoginRequest    // the login, to reopen the upstream after an abort
	inTx  bool            // a MAIL may be open upstream: RSET it before the next one
	dead  bool            // the upstream connection was lost: 421 from now on
	stale bool            // the upstream connection was closed to abort a message: reopen it at the next command
}

// newSession opens the session at the first HELO or EHLO.
func (c *conn) newSession() *session {
	sess := &session{s: c.s, c: c, tc: c.tc}
	if tlsConn, ok := c.nc.(*tls.Conn); ok {
		sess.tls = true
		c.tc.setTLS(tlsConn.ConnectionState())
	}
	return sess
}

func (ss *session) ctx() context.Context { return ss.s.ctx }

// event logs one event of the session with the connection's keys.
func (ss *session) event(level slog.Level, msg string, attrs ...slog.Attr) {
	ss.tc.line.Event(ss.ctx(), ss.s.o.Logger, level, msg, attrs...)
}

// authMechanisms offers PLAIN and LOGIN over TLS, and without TLS only to
// clients the decision trusts with plaintext.
func (ss *session) authMechanisms() []string {
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.line.RemoteAddr, false) {
		return nil
	}
	return mechanisms()
}

// auth starts an AUTH exchange.
func (ss *session) auth(mech string) (sasl.Server, error) {
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.line.RemoteAddr, false) {
		// Refused before the exchange, but an initial response may have
		// carried the password in clear: the decision's step 1 refuses
		// and audits it (the user is not known yet), without any lookup.
		l, _ := ss.s.o.Decider.Decide(ss.ctx(), policy.Attempt{Proto: policy.SMTP, Client: ss.tc.line.RemoteAddr,
			ClientName: clientName(ss.c.helo), Received: time.Now()})
		l.Finish(ss.ctx(), policy.NotAsked)
		return nil, errNeedTLS()
	}
	// The attempt starts when the credentials are complete, not at the
	// AUTH command: a client that takes its time before sending its
	// password must still get the full failure delay.
	auth := func(c credentials, err error) error { return ss.authenticate(time.Now(), c, err) }
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{auth: auth}, nil
	case sasl.Login:
		return &loginServer{auth: auth}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate dials the upstream (before the decision: see Upstream.Dial),
// decides and logs in upstream. It returns the reply error the client
// sees, after the decision's uniform delay, or nil when the session is
// logged in.
func (ss *session) authenticate(received time.Time, c credentials, malformed error) error {
	ctx := ss.ctx()
	a := policy.Attempt{
		Proto:      policy.SMTP,
		User:       c.user,
		Secret:     c.pass,
		Client:     ss.tc.line.RemoteAddr,
		TLS:        ss.tls,
		ClientName: clientName(ss.c.helo),
		Received:   received,
	}
	// The session line names the user tried, also when the login fails.
	ss.tc.tried(c.user)
	dec := ss.s.o.Decider
	// finish ends the login, answers it and, when it failed, logs why.
	finish := func(l *policy.Login, r policy.Result, outcome string, err error) error {
		if l.Credential() != policy.NoCredential {
			ss.tc.tried(c.user, l.Describe())
		}
		class := l.Finish(ctx, r)
		ss.tc.failure()
		if class == policy.ClassTemporary {
			ss.event(slog.LevelError, "smtp auth failed for a temporary reason", slog.String("user", c.user), slog.String("reason", l.Reason()), slog.Any("err", err))
			ss.tc.setOutcome(outcome)
			return errAuthTemp()
		}
		ss.event(slog.LevelDebug, "smtp auth failed", slog.String("user", c.user), slog.String("reason", l.Reason()))
		return errAuthInvalid()
	}
	if malformed != nil {
		return finish(dec.Undecided(a, "malformed SASL response"), policy.NotAsked, "", nil)
	}
	if c.authzid != "" && c.authzid != c.user {
		return finish(dec.Undecided(a, "authorization identity differs from the user"), policy.NotAsked, "", nil)
	}
	pending, err := ss.s.o.Upstream.Dial(ctx, ss.tc.line.RemoteAddr)
	if err != nil {
		return finish(dec.Undecided(a, "upstream unavailable before the decision"), policy.Unreachable(err), "upstream_unavailable", err)
	}
	defer func() {
		if pending != nil {
			_ = pending.Close()
		}
	}()
	l, err := dec.Decide(ctx, a)
	if err != nil {
		return finish(l, policy.NotAsked, "decision_error", err)
	}
	if !l.Allowed() {
		return finish(l, policy.NotAsked, "", nil)
	}
	req := LoginRequest{User: l.User()}
	if clientName(ss.c.helo) == ss.c.helo {
		req.Helo = ss.c.helo
	}
	if l.Credential() == policy.Primary {
		req.Password = c.pass
	}
	p := pending
	pending = nil // Login consumes it
	up, err := p.Login(ctx, req)
	if err != nil {
		if errors.Is(err, ErrLoginRefused) {
			if l.Credential() != policy.Primary {
				ss.event(slog.LevelError, "smtp upstream refused an allowed login", slog.String("user", l.User()), slog.Any("err", err))
			}
			// For an app password too: the audit trail then shows the
			// failure after the success that the decision recorded.
			return finish(l, policy.Refused, "", nil)
		}
		return finish(l, policy.Unreachable(err), "upstream_unavailable", err)
	}
	l.Finish(ctx, policy.Accepted)
	connlimit.LoggedIn(ss.tc.Conn) // a session now: no longer capped as a pre-login connection
	ss.up, ss.req = up, req
	ss.tc.setUpstream(up)
	addr := ""
	if ad, ok := up.(interface{ Addr() string }); ok {
		addr = ad.Addr()
	}
	ss.tc.login(l.User(), l.Describe(), addr)
	if l.Credential() == policy.AppPassword {
		ss.tc.trackRevocation(l.AppPasswordID())
	}
	return nil
}

// upstreamErr maps an upstream failure to the client's reply: the
// upstream's own reply keeps its code; a lost connection is a 421 that
// closes the client's connection too.
func (ss *session) upstreamErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return &smtp.SMTPError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: se.Message}
	}
	ss.event(slog.LevelWarn, "smtp upstream failed", slog.String("user", ss.tc.line.User), slog.String("op", op), slog.Any("err", err))
	if ss.up != nil && !ss.dead {
		_ = ss.up.Close()
	}
	ss.dead, ss.inTx = true, false
	ss.tc.closeAfterWrite.Store(true)
	return errUpstreamGone()
}

// acquire returns the upstream session to use, reopening it (a new login
// as the same user) when an aborted message closed it.
func (ss *session) acquire() (UpstreamSession, error) {
	if ss.up == nil {
		return nil, errAuthNeeded()
	}
	if ss.dead {
		ss.tc.closeAfterWrite.Store(true)
		return nil, errUpstreamGone()
	}
	if !ss.stale {
		return ss.up, nil
	}
	// The last message was aborted, which closed the upstream connection
	// so that no partial message could be committed: log in again.
	var fresh UpstreamSession
	p, err := ss.s.o.Upstream.Dial(ss.ctx(), ss.tc.line.RemoteAddr)
	if err == nil {
		fresh, err = p.Login(ss.ctx(), ss.req)
	}
	if err != nil {
		ss.event(slog.LevelWarn, "smtp upstream could not be reopened after an aborted message", slog.String("user", ss.req.User), slog.Any("err", err))
		ss.dead = true
		ss.tc.closeAfterWrite.Store(true)
		return nil, errUpstreamGone()
	}
	ss.up, ss.stale = fresh, false
	ss.tc.setUpstream(fresh)
	return fresh, nil
}

// mail is MAIL FROM, relayed.
func (ss *session) mail(from string, opts *smtp.MailOptions) error {
	up, err := ss.acquire()
	if err != nil {
		return err
	}
	if err := up.Mail(from, relayedMailOptions(opts)); err != nil {
		return ss.upstreamErr("MAIL", err)
	}
	ss.inTx = true
	return nil
}

// relayedMailOptions returns the MAIL parameters passgate relays: the
// client's, without AUTH=<addr>, which would claim an authenticated
// sender of the client's choosing to an upstream that trusts passgate.
func relayedMailOptions(opts *smtp.MailOptions) *smtp.MailOptions {
	if opts == nil || opts.Auth == nil {
		return opts
	}
	o := *opts
	o.Auth = nil
	return &o
}

// rcpt is RCPT TO, relayed.
func (ss *session) rcpt(to string, opts *smtp.RcptOptions) error {
	up, err := ss.acquire()
	if err != nil {
		return err
	}
	return ss.upstreamErr("RCPT", up.Rcpt(to, opts))
}

// data streams the message from r (a dataReader or a bdatReader) to the
// upstream; every error it returns is an *smtp.SMTPError. The upstream
// is asked for DATA only once the message has a first byte or has
// ended: a message aborted before that never reaches it. When r fails (too large, aborted by a command, the client gone),
// the upstream aborts the message by closing its connection, and the
// next MAIL logs in again.
func (ss *session) data(r io.Reader) error {
	var first [1]byte
	n, err := io.ReadFull(r, first[:])
	switch {
	case err == io.EOF:
		r = bytes.NewReader(nil)
	case err != nil:
		// Aborted (or the client went away) before the first byte: the
		// upstream was never asked for DATA.
		return clientReadErr(err)
	default:
		r = &prefixed{b: first[0], pending: n == 1, r: r}
	}

	up, err := ss.acquire()
	if err != nil {
		return err
	}
	dr := &errReader{r: r}
	sent, err := up.Data(dr)
	// A refused message may leave the upstream's transaction open:
	// Postfix keeps MAIL and RCPT after refusing the DATA command itself
	// (smtpd_data_restrictions), and every MAIL is then "nested" until
	// RSET. The transaction counts as open, so that the end of the
	// message (conn.reset) sends RSET; after a refusal of the message's
	// end, that RSET is redundant and harmless.
	ss.inTx = err != nil && dr.err == nil
	if dr.err != nil && ss.up == up && !ss.dead {
		// The client's side failed: the upstream aborted the message by
		// closing its connection.
		ss.stale = true
	}
	ss.tc.message(sent, err == nil && dr.err == nil)
	if dr.err != nil {
		return clientReadErr(dr.err)
	}
	return ss.upstreamErr("DATA", err)
}

// clientReadErr is the reply to a message whose reading failed on the
// client's side: the reader's own reply (552, too large) or a fixed 451,
// the same before and after the message's first byte. The error's text
// (a timeout names passgate's address) is never the client's.
func clientReadErr(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return errMessageRead()
}

// reset is RSET, a new EHLO, or the end of a message.
func (ss *session) reset() {
	if ss.up == nil {
		return
	}
	send := ss.inTx && !ss.dead && !ss.stale
	ss.inTx = false
	if !send {
		return
	}
	// The replies so far leave before the upstream's reply is waited for.
	ss.c.flush()
	_ = ss.upstreamErr("RSET", ss.up.Reset())
}

// logout ends the upstream session: politely with QUIT, or by closing it
// when a message was aborted or the connection was lost. The caller has
// sent the client's last reply already.
func (ss *session) logout() {
	up, quit := ss.up, ss.up != nil && !ss.dead && !ss.stale
	ss.up, ss.inTx = nil, false
	ss.tc.setUpstream(nil)
	switch {
	case up == nil:
	case !quit:
		_ = up.Close()
	default:
		_ = up.Quit()
	}
}

// prefixed is a reader whose first byte was read ahead: Read returns it
// together with r's next bytes, so that a short message still reaches
// the upstream in one read (and one write) rather than a byte and the
// rest.
type prefixed struct {
	b       byte
	pending bool
	r       io.Reader
}

func (p *prefixed) Read(b []byte) (int, error) {
	if !p.pending || len(b) == 0 {
		return p.r.Read(b)
	}
	b[0], p.pending = p.b, false
	if len(b) == 1 {
		return 1, nil
	}
	n, err := p.r.Read(b[1:])
	return n + 1, err
}

// ReadStuffed is r's (smtpupstream.StuffedReader), once the byte read
// ahead has been read: until then, the caller Reads, and r's Reads end
// at line starts from then on, as after a ReadStuffed of its own.
func (p *prefixed) ReadStuffed() ([]byte, int, error) {
	if p.pending {
		if lr, ok := p.r.(interface{ endReadsAtLines() }); ok {
			lr.endReadsAtLines()
		}
		return nil, 0, nil
	}
	return readStuffed(p.r)
}

// stuffedReader is a reader of a message that hands out runs of its
// lines as the client sent them (dataReader.ReadStuffed, which
// smtpupstream.StuffedReader calls for).
type stuffedReader interface {
	ReadStuffed() ([]byte, int, error)
}

// readStuffed is r's ReadStuffed, or no bytes (the caller then Reads)
// when r has none.
func readStuffed(r io.Reader) ([]byte, int, error) {
	if sr, ok := r.(stuffedReader); ok {
		return sr.ReadStuffed()
	}
	return nil, 0, nil
}

// errReader remembers the first error of r other than io.EOF: the
// client's side of a message that failed. (r's ReadStuffed returns no
// other error.)
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// ReadStuffed is r's, for smtpupstream.StuffedReader.
func (e *errReader) ReadStuffed() ([]byte, int, error) { return readStuffed(e.r) }
