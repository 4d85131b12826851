package smtpfront

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/policy"
)

// The replies passgate writes itself. Every failed AUTH gets errAuthInvalid,
// byte for byte, whatever the reason.
var (
	errAuthInvalid  = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errAuthTemp     = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Temporary authentication failure"}
	errAuthNeeded   = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errNeedTLS      = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11}, Message: "Encryption required for requested authentication mechanism"}
	errTooMany      = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many commands before authentication, closing connection"}
	errUpstreamGone = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Connection to the mail server lost, try again later"}
	errUpstreamFail = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Temporary failure of the mail server, try again later"}
)

// Mechanisms offered, in the order clients see them.
var mechanisms = []string{sasl.Plain, sasl.Login}

// session is go-smtp's Session for one client; go-smtp calls it from the
// connection's goroutine (and Data from a BDAT goroutine, never
// concurrently with the others).
type session struct {
	s    *Server
	conn *smtp.Conn
	tc   *trackedConn
	tls  bool

	up   UpstreamSession // nil until AUTH succeeds
	inTx bool            // a MAIL is open upstream
	dead bool            // the upstream connection was lost
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	tc := unwrap(c.Conn())
	if tc == nil {
		return nil, errors.New("smtpfront: connection not accepted by this server")
	}
	sess := &session{s: s, conn: c, tc: tc}
	if st, ok := c.TLSConnectionState(); ok {
		sess.tls = true
		tc.setTLS(st)
	}
	if tc.command() {
		tc.closeAfterWrite.Store(true)
		return nil, errTooMany
	}
	return sess, nil
}

func (ss *session) ctx() context.Context { return ss.s.ctx }

// AuthMechanisms offers PLAIN and LOGIN over TLS, and without TLS only to
// clients the decision trusts with plaintext.
func (ss *session) AuthMechanisms() []string {
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.remote, false) {
		return nil
	}
	return mechanisms
}

// Auth starts an AUTH exchange.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.tc.command() {
		ss.tc.closeAfterWrite.Store(true)
		return nil, errTooMany
	}
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.remote, false) {
		return nil, errNeedTLS
	}
	started := time.Now()
	auth := func(c credentials, err error) error { return ss.authenticate(started, c, err) }
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{auth: auth}, nil
	case sasl.Login:
		return &loginServer{auth: auth}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate decides and logs in upstream. It returns the reply error
// the client sees, or nil when the session is logged in.
func (ss *session) authenticate(started time.Time, c credentials, malformed error) error {
	ctx := ss.ctx()
	a := policy.Attempt{
		Proto:      policy.SMTP,
		User:       c.user,
		Secret:     policy.Secret(c.pass),
		Client:     ss.tc.remote,
		TLS:        ss.tls,
		ClientName: ss.conn.Hostname(),
		Started:    started,
	}
	fail := func(reason string, attrs ...slog.Attr) error {
		ss.s.o.Decider.Fail(ctx, a)
		ss.s.log.LogAttrs(ctx, slog.LevelDebug, "smtp auth failed",
			append([]slog.Attr{slog.Uint64("conn_id", ss.tc.id), slog.String("user", c.user),
				slog.String("remote_addr", ss.tc.remote.String()), slog.String("reason", reason)}, attrs...)...)
		if ss.tc.failure() {
			ss.tc.closeAfterWrite.Store(true)
		}
		return errAuthInvalid
	}
	if malformed != nil {
		return fail("malformed SASL response")
	}
	if c.authzid != "" && c.authzid != c.user {
		return fail("authorization identity differs from the user")
	}
	d, err := ss.s.o.Decider.Decide(ctx, a)
	if err != nil {
		ss.s.log.LogAttrs(ctx, slog.LevelError, "smtp auth decision failed",
			slog.Uint64("conn_id", ss.tc.id), slog.String("user", c.user), slog.Any("err", err))
		ss.tc.setOutcome("decision_error")
		return errAuthTemp
	}
	if !d.Allow {
		return fail("denied")
	}
	req := LoginRequest{User: d.User, Client: ss.tc.remote, Helo: ss.conn.Hostname()}
	primary := d.Kind == policy.KindPrimary
	if primary {
		req.Password = c.pass
	}
	up, err := ss.s.o.Upstream.Login(ctx, req)
	if err != nil {
		if errors.Is(err, ErrLoginRefused) {
			if primary {
				ss.s.o.Decider.PrimaryResult(ctx, a, d, false)
			} else {
				ss.s.log.LogAttrs(ctx, slog.LevelError, "smtp upstream refused an allowed login",
					slog.Uint64("conn_id", ss.tc.id), slog.String("user", d.User), slog.Any("err", err))
			}
			return fail("refused by the upstream")
		}
		ss.s.log.LogAttrs(ctx, slog.LevelError, "smtp upstream login failed",
			slog.Uint64("conn_id", ss.tc.id), slog.String("user", d.User), slog.Any("err", err))
		ss.tc.setOutcome("upstream_unavailable")
		return errAuthTemp
	}
	if primary {
		ss.s.o.Decider.PrimaryResult(ctx, a, d, true)
	}
	ss.up = up
	upstream := ""
	if ad, ok := up.(interface{ Addr() string }); ok {
		upstream = ad.Addr()
	}
	ss.tc.login(d.User, d.Credential(), upstream)
	if d.Kind == policy.KindAppPassword {
		ss.tc.trackRevocation(d.AppPasswordID)
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
	ss.s.log.LogAttrs(ss.ctx(), slog.LevelWarn, "smtp upstream failed",
		slog.Uint64("conn_id", ss.tc.id), slog.String("user", ss.tc.user), slog.String("op", op), slog.Any("err", err))
	ss.markDead()
	ss.tc.closeAfterWrite.Store(true)
	return errUpstreamGone
}

func (ss *session) markDead() {
	if ss.up != nil && !ss.dead {
		_ = ss.up.Close()
	}
	ss.dead = true
	ss.inTx = false
}

func (ss *session) ready() error {
	if ss.up == nil {
		if ss.tc.command() {
			ss.tc.closeAfterWrite.Store(true)
			return errTooMany
		}
		return errAuthNeeded
	}
	if ss.dead {
		ss.tc.closeAfterWrite.Store(true)
		return errUpstreamGone
	}
	return nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if err := ss.ready(); err != nil {
		return err
	}
	if opts != nil && opts.Auth != nil {
		// MAIL ... AUTH=<addr> would claim an authenticated sender of the
		// client's choosing to an upstream that trusts passgate: drop it.
		o := *opts
		o.Auth = nil
		opts = &o
	}
	if err := ss.up.Mail(from, opts); err != nil {
		return ss.upstreamErr("MAIL", err)
	}
	ss.inTx = true
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := ss.ready(); err != nil {
		return err
	}
	return ss.upstreamErr("RCPT", ss.up.Rcpt(to, opts))
}

// Data streams the message to the upstream. The client's read deadline is
// pushed forward as data arrives, so a long upload is bounded by its
// pauses, not its length.
func (ss *session) Data(r io.Reader) error {
	if err := ss.ready(); err != nil {
		return err
	}
	dr := &dataReader{r: r, conn: ss.tc, timeout: ss.s.o.ReadTimeout}
	n, err := ss.up.Data(dr)
	ss.inTx = false
	ss.tc.message(n, err == nil)
	if dr.err != nil {
		// The client's side failed (too large, or gone): the upstream
		// aborted the message by closing; go-smtp answers (552 etc.).
		ss.dead = true
		var se *smtp.SMTPError
		if errors.As(dr.err, &se) {
			return se
		}
		return errUpstreamFail
	}
	return ss.upstreamErr("DATA", err)
}

// Reset is RSET, a new EHLO, or the end of a message.
func (ss *session) Reset() {
	if ss.up == nil {
		if ss.tc.command() {
			ss.tc.closeAfterWrite.Store(true)
		}
		return
	}
	if !ss.inTx || ss.dead {
		return
	}
	ss.inTx = false
	if err := ss.up.Reset(); err != nil {
		_ = ss.upstreamErr("RSET", err)
	}
}

// Logout ends the upstream session politely.
func (ss *session) Logout() error {
	if ss.up != nil && !ss.dead {
		_ = ss.up.Quit()
	}
	ss.up = nil
	return nil
}

// dataReader extends the client connection's read deadline while a
// message streams, and remembers a read error.
type dataReader struct {
	r        io.Reader
	conn     *trackedConn
	timeout  time.Duration
	extended time.Time
	err      error
}

func (d *dataReader) Read(b []byte) (int, error) {
	if now := time.Now(); now.Sub(d.extended) > time.Second {
		d.extended = now
		_ = d.conn.SetReadDeadline(now.Add(d.timeout))
	}
	n, err := d.r.Read(b)
	if err != nil && err != io.EOF {
		d.err = err
	}
	return n, err
}
