package smtpfront

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
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
func errUpstreamFail() error {
	return reply(451, 4, 3, 0, "Temporary failure of the mail server, try again later")
}

// reply builds a reply: its code, enhanced code (class.subject.detail) and
// text.
func reply(code, class, subject, detail int, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{class, subject, detail}, Message: msg}
}

// mechanisms returns the mechanisms offered, in the order clients see
// them.
func mechanisms() []string { return []string{sasl.Plain, sasl.Login} }

// session is go-smtp's Session for one client. go-smtp calls it from the
// connection's goroutine, except that for BDAT it runs Data in a goroutine
// of its own, which a following RSET, EHLO or disconnect (Reset, Logout)
// overlaps with; and Server.Close calls Logout from its own goroutine. So
// the upstream state is guarded by mu, every use of the upstream
// connection holds upMu, and Reset and Logout abort an in-flight Data and
// wait for it to return before they touch the upstream.
type session struct {
	s    *Server
	conn *smtp.Conn
	tc   *trackedConn
	tls  bool

	upMu sync.Mutex // held while the upstream connection is used

	mu    sync.Mutex      // guards the fields below
	up    UpstreamSession // nil until AUTH succeeds, and after Logout
	req   LoginRequest    // the login, to reopen the upstream after an abort
	inTx  bool            // a MAIL is open upstream
	dead  bool            // the upstream connection was lost: 421 from now on
	stale bool            // the upstream connection was closed to abort a message: reopen it at the next command
	data  *inflight       // the running Data, if any
	// bdat is the pipe of the last BDAT message's Data, kept after Data
	// returns until Reset or Logout has seen go-smtp's goroutine finish.
	bdat *io.PipeReader
}

// inflight is one running Data.
type inflight struct {
	r       io.Reader     // the reader go-smtp gave Data
	done    chan struct{} // closed when Data returns
	sending bool          // DATA was sent upstream (guarded by session.mu)
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
		return nil, errTooMany()
	}
	return sess, nil
}

func (ss *session) ctx() context.Context { return ss.s.ctx }

// event logs one event of the session with the connection's keys.
func (ss *session) event(level slog.Level, msg string, attrs ...slog.Attr) {
	ss.tc.line.Event(ss.ctx(), ss.s.o.Logger, level, msg, attrs...)
}

// AuthMechanisms offers PLAIN and LOGIN over TLS, and without TLS only to
// clients the decision trusts with plaintext.
func (ss *session) AuthMechanisms() []string {
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.line.RemoteAddr, false) {
		return nil
	}
	return mechanisms()
}

// Auth starts an AUTH exchange.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.tc.command() {
		return nil, errTooMany()
	}
	if !ss.tls && !ss.s.o.Decider.PlaintextAllowed(ss.tc.line.RemoteAddr, false) {
		// Refused before the exchange, but an initial response may have
		// carried the password in clear: the decision's step 1 refuses
		// and audits it (the user is not known yet), without any lookup.
		l, _ := ss.s.o.Decider.Decide(ss.ctx(), policy.Attempt{Proto: policy.SMTP, Client: ss.tc.line.RemoteAddr,
			ClientName: ss.conn.Hostname(), Received: time.Now()})
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
		ClientName: ss.conn.Hostname(),
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
	req := LoginRequest{User: l.User(), Helo: ss.conn.Hostname()}
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
	ss.mu.Lock()
	ss.up, ss.req = up, req
	ss.mu.Unlock()
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
	ss.mu.Lock()
	if ss.up != nil && !ss.dead {
		_ = ss.up.Close()
	}
	ss.dead, ss.inTx = true, false
	ss.mu.Unlock()
	ss.tc.closeAfterWrite.Store(true)
	return errUpstreamGone()
}

// acquire locks upMu and returns the upstream session to use, reopening
// it (a new login as the same user) when an aborted message closed it.
// The caller unlocks upMu.
func (ss *session) acquire() (UpstreamSession, error) {
	ss.mu.Lock()
	up, dead, stale, req := ss.up, ss.dead, ss.stale, ss.req
	ss.mu.Unlock()
	if up == nil {
		if ss.tc.command() {
			return nil, errTooMany()
		}
		return nil, errAuthNeeded()
	}
	if dead {
		ss.tc.closeAfterWrite.Store(true)
		return nil, errUpstreamGone()
	}
	ss.upMu.Lock()
	if !stale {
		return up, nil
	}
	// The last message was aborted, which closed the upstream connection
	// so that no partial message could be committed: log in again.
	var fresh UpstreamSession
	p, err := ss.s.o.Upstream.Dial(ss.ctx(), ss.tc.line.RemoteAddr)
	if err == nil {
		fresh, err = p.Login(ss.ctx(), req)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch {
	case ss.up == nil: // Logout ran meanwhile
		if fresh != nil {
			_ = fresh.Close()
		}
	case err != nil:
		ss.event(slog.LevelWarn, "smtp upstream could not be reopened after an aborted message", slog.String("user", req.User), slog.Any("err", err))
		ss.dead = true
	default:
		ss.up, ss.stale = fresh, false
		return fresh, nil
	}
	ss.upMu.Unlock()
	ss.tc.closeAfterWrite.Store(true)
	return nil, errUpstreamGone()
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	up, err := ss.acquire()
	if err != nil {
		return err
	}
	defer ss.upMu.Unlock()
	if opts != nil && opts.Auth != nil {
		// MAIL ... AUTH=<addr> would claim an authenticated sender of the
		// client's choosing to an upstream that trusts passgate: drop it.
		o := *opts
		o.Auth = nil
		opts = &o
	}
	if err := up.Mail(from, opts); err != nil {
		return ss.upstreamErr("MAIL", err)
	}
	ss.mu.Lock()
	ss.inTx = true
	ss.mu.Unlock()
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	up, err := ss.acquire()
	if err != nil {
		return err
	}
	defer ss.upMu.Unlock()
	return ss.upstreamErr("RCPT", up.Rcpt(to, opts))
}

// Data streams the message to the upstream. The client's read deadline is
// pushed forward as data arrives, so a long upload is bounded by its
// pauses, not its length.
//
// For BDAT, go-smtp runs Data in a goroutine of its own and feeds it
// through a pipe, which it closes with an error when the client aborts the
// message (RSET, EHLO, disconnect) before calling Reset or Logout. Data
// registers itself before it touches the upstream, and waits for the
// first byte (or the abort) first, so that a Data that go-smtp starts
// after the abort never sends DATA upstream.
func (ss *session) Data(r io.Reader) error {
	f := &inflight{r: r, done: make(chan struct{})}
	ss.mu.Lock()
	ss.data = f
	if pr, ok := r.(*io.PipeReader); ok {
		ss.bdat = pr
	}
	ss.mu.Unlock()
	defer func() {
		ss.mu.Lock()
		if ss.data == f {
			ss.data = nil
		}
		ss.mu.Unlock()
		close(f.done)
	}()

	var first [1]byte
	n, err := io.ReadFull(r, first[:])
	switch {
	case err == io.EOF:
		r = bytes.NewReader(nil)
	case err != nil:
		// Aborted (or the client went away) before the first byte: the
		// upstream was never asked for DATA.
		return err
	default:
		r = &prefixed{b: first[0], pending: n == 1, r: r}
	}

	up, err := ss.acquire()
	if err != nil {
		return err
	}
	defer ss.upMu.Unlock()
	ss.mu.Lock()
	f.sending = true
	ss.mu.Unlock()
	dr := &dataReader{r: r, conn: ss.tc, timeout: ss.s.o.ReadTimeout}
	sent, err := up.Data(dr)
	ss.mu.Lock()
	ss.inTx = false
	if dr.err != nil && ss.up == up && !ss.dead {
		// The client's side failed (too large, aborted, or gone): the
		// upstream aborted the message by closing its connection. The next
		// MAIL logs in again; go-smtp answers this one (552 etc.).
		ss.stale = true
	}
	aborted := ss.stale
	ss.mu.Unlock()
	ss.tc.message(sent, err == nil && dr.err == nil)
	if dr.err != nil {
		var se *smtp.SMTPError
		if errors.As(dr.err, &se) {
			return se
		}
		return errUpstreamFail()
	}
	if err != nil && aborted {
		// Reset or Logout closed the upstream under us to abort the message.
		return errUpstreamFail()
	}
	return ss.upstreamErr("DATA", err)
}

// abortData aborts a running Data, if any, and waits for it to return.
// go-smtp has already closed a BDAT pipe with an error when it calls Reset
// or Logout on a client's RSET, EHLO or disconnect, but not on STARTTLS
// or Server.Close: closeReader (Logout) closes it, or for DATA the
// client's connection, then. Once DATA went upstream, the upstream
// connection is closed (so that the partial message is never committed
// and a blocked write ends) and reopened at the next MAIL.
//
// go-smtp's BDAT goroutine still hands Data's result to a channel field
// after Data returns, and the next BDAT replaces that field: so abortData
// also waits until the goroutine has closed its end of the pipe, which it
// does right after that hand-over, lest the next message race with it
// (and get this one's error as its reply).
func (ss *session) abortData(closeReader bool) {
	ss.mu.Lock()
	f, pr := ss.data, ss.bdat
	ss.bdat = nil
	if f != nil && f.sending && ss.up != nil && !ss.dead && !ss.stale {
		_ = ss.up.Close()
		ss.stale = true
	}
	ss.mu.Unlock()
	if f != nil {
		switch {
		case closeReader && pr != nil && f.r == io.Reader(pr):
			_ = pr.Close()
		case closeReader:
			// DATA reads the client's connection, and Logout overlaps
			// with it only when the server is being closed: close that
			// connection, so that Data does not wait for the client's
			// next bytes.
			_ = ss.tc.Conn.Close()
		}
		<-f.done
	}
	if pr == nil || closeReader {
		return
	}
	// Data may have returned already (even before Reset was called): the
	// goroutine that ran it may still be about to hand its result over.
	// The pipe's write end is closed, so Read no longer blocks; it
	// answers io.ErrClosedPipe once that goroutine has closed the read
	// end, right after the hand-over.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, err := pr.Read(nil); err == io.ErrClosedPipe {
			return
		}
	}
}

// Reset is RSET, a new EHLO, or the end of a message.
func (ss *session) Reset() {
	// go-smtp resets after the reply to a message: send that reply before
	// anything here can wait.
	ss.tc.flush()
	ss.mu.Lock()
	authed := ss.up != nil
	ss.mu.Unlock()
	if !authed {
		ss.tc.command()
		return
	}
	ss.abortData(false)
	ss.mu.Lock()
	up, send := ss.up, ss.up != nil && ss.inTx && !ss.dead && !ss.stale
	ss.inTx = false
	ss.mu.Unlock()
	if !send {
		return
	}
	ss.upMu.Lock()
	err := up.Reset()
	ss.upMu.Unlock()
	_ = ss.upstreamErr("RSET", err)
}

// Logout ends the upstream session: politely with QUIT, or by closing it
// when a message is being aborted or another command still uses it (Close
// of the server, from another goroutine).
func (ss *session) Logout() error {
	// The client's 221 (go-smtp writes it before it calls Logout) leaves
	// before the upstream's QUIT is waited for.
	ss.tc.flush()
	ss.abortData(true)
	ss.mu.Lock()
	up, quit := ss.up, ss.up != nil && !ss.dead && !ss.stale
	ss.up, ss.inTx = nil, false
	ss.mu.Unlock()
	switch {
	case up == nil:
	case !quit || !ss.upMu.TryLock():
		_ = up.Close()
	default:
		_ = up.Quit()
		ss.upMu.Unlock()
	}
	return nil
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
