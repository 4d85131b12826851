package imapfront

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/passgate/passgate/backends/sockwire"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
	"github.com/passgate/passgate/proxy/relay"
	"github.com/passgate/passgate/proxy/revoke"
)

// readBufferSize is the size of a connection's pre-login read buffer. A
// line may be longer (MaxLineLength): it is read in pieces.
const readBufferSize = 4096

// session is a logged-in session that the relay is to copy: the client's
// connection (with what it pipelined behind its login), the upstream's,
// and the context that revocation and shutdown end.
type session struct {
	ctx     context.Context
	release func() // ends the revocation tracking
	client  net.Conn
	up      net.Conn
}

// conn is one client connection, from accept to the end of its relay.
type conn struct {
	srv *Server
	raw net.Conn // as accepted, made relay.Waitable
	nc  net.Conn // raw, or the *tls.Conn over it
	br  *bufio.Reader
	ctx context.Context
	// cancel ends ctx; the revocation registry ends it with a cause
	// (revoke.ErrRevoked) once the session is relayed.
	cancel context.CancelCauseFunc

	deadline time.Time // end of the pre-login phase
	isTLS    bool
	tlsVer   string
	tlsSuite string

	clientID []IDField
	commands int
	failures int
	loggedIn *session // set by a successful login, for serve to relay

	observe.Session // the fields of the session log line

	mu       sync.Mutex
	closing  bool // Shutdown or Close asked this connection to end
	relaying bool // logged in: the relay owns the connection
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancelCause(s.baseCtx)
	// Waitable lets the relay wait for a logged-in client's next bytes
	// under TLS without holding a buffer while the session is idle.
	// The socket is read and written with raw system calls
	// (sockwire.Socket) from the greeting on, as the relay does after the
	// login.
	wc := relay.Waitable(sockwire.NewSocket(nc, nil))
	return &conn{
		srv:     s,
		raw:     wc,
		nc:      wc,
		ctx:     ctx,
		cancel:  cancel,
		Session: observe.Session{ConnID: s.nextID.Add(1), Proto: policy.IMAP.String(), RemoteAddr: lifecycle.ClientAddr(nc)},
	}
}

// shutdown asks a connection that has not logged in to end: its goroutine
// wakes up from a read, says "* BYE Server shutting down" and closes. A
// relayed session is left alone.
func (c *conn) shutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.relaying {
		return
	}
	c.closing = true
	c.raw.SetReadDeadline(time.Now())
	c.cancel(nil)
}

// closeAll closes the connection. A relayed session is ended through its
// context: the relay says "* BYE" between two responses if it can, then
// closes both sides; a write deadline of byeTimeout keeps a client that
// does not read from holding that up.
func (c *conn) closeAll() {
	c.mu.Lock()
	c.closing = true
	relaying := c.relaying
	c.mu.Unlock()
	if !relaying {
		c.cancel(nil)
		c.raw.Close()
		return
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	c.cancel(nil)
}

// farewell is what a relayed session says when passgate ends it.
func (c *conn) farewell(cause error) []byte {
	switch {
	case errors.Is(cause, revoke.ErrRevoked):
		return []byte("* BYE Session closed: the app password it logged in with was deleted\r\n")
	case c.isClosing() || c.srv.set.Closing():
		return []byte("* BYE Server shutting down\r\n")
	}
	return nil
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// armDeadline sets the pre-login deadline on the connection, or an expired
// one if Shutdown already asked the connection to end.
func (c *conn) armDeadline() { c.armDeadlineAt(c.deadline) }

// armDeadlineAt sets deadline t on the connection, or an expired one if
// Shutdown already asked the connection to end.
func (c *conn) armDeadlineAt(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.raw.SetDeadline(t)
	if c.closing {
		c.raw.SetReadDeadline(time.Now())
	}
}

// write sends one reply in one Write.
func (c *conn) write(b []byte) error {
	_, err := c.nc.Write(b)
	return err
}

// bye ends the connection as ended, after a last untagged BYE with a
// short write deadline of its own. It reports that the connection is done.
func (c *conn) bye(ended, text string) bool {
	c.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	_ = c.write([]byte("* BYE " + text + "\r\n"))
	c.Ended = ended
	return true
}

// serve runs the pre-login loop and, after a successful login, starts the
// relay and returns: the relay's goroutines finish the connection and
// call done when the session ends. Without a login it finishes the
// connection and calls done itself.
func (c *conn) serve(done func()) {
	relayed := false
	defer func() {
		if !relayed {
			c.finish()
			done()
		}
	}()
	if s := c.preLogin(); s != nil {
		relayed = true
		c.relay(s, done)
	}
}

// preLogin greets the client and runs its commands until it logs in (it
// then returns the session to relay) or the connection is done (nil).
func (c *conn) preLogin() *session {
	o := &c.srv.opts
	c.Start = time.Now()
	c.deadline = c.Start.Add(o.PreLoginTimeout)
	if o.ImplicitTLS && !c.handshake() {
		return nil
	}
	// On a plaintext port the greeting goes out before the pre-login
	// deadline is armed (which may cost the runtime a wake-up of its
	// network poller): the first small write into a new TCP connection's
	// empty send buffer does not block, whatever the client does.
	if c.reply("* OK [CAPABILITY " + c.caps() + "] passgate ready\r\n") {
		return nil
	}
	if !o.ImplicitTLS {
		c.armDeadline()
	}
	c.br = bufio.NewReaderSize(c.nc, readBufferSize)
	for {
		if c.isClosing() {
			c.bye("shutdown", "Server shutting down")
			return nil
		}
		if !c.isTLS {
			// Windows Mail tries implicit TLS on the STARTTLS port first:
			// a TLS ClientHello has no line end and would hang until the
			// pre-login timeout.
			if b, err := c.br.Peek(1); err == nil && b[0] == 0x16 {
				c.bye("protocol_error", "TLS handshake on a plaintext port: use STARTTLS")
				return nil
			}
		}
		r := reader{br: c.br, maxLine: o.MaxLineLength, maxLiteral: o.MaxLiteral, cont: c.continueLiteral}
		cmd, err := r.readCommand()
		if err != nil {
			var re *replyError
			if !errors.As(err, &re) {
				c.readFailed(err)
				return nil
			}
			if c.countCommand() {
				return nil
			}
			if werr := c.write(re.wire()); werr != nil || re.fatal {
				c.Ended = re.ended
				if werr != nil {
					c.Ended = "client"
				}
				return nil
			}
			continue
		}
		if c.countCommand() {
			return nil
		}
		if done := c.dispatch(cmd); done {
			return c.loggedIn
		}
	}
}

// relay starts copying the bytes of a logged-in session; when the session
// ends, the relay finishes the connection and calls done.
func (c *conn) relay(s *session, done func()) {
	c.loggedIn = nil
	opts := relay.Options{Framer: newResponseFramer(), Farewell: c.farewell, Buffers: c.srv.buffers, Parker: c.srv.parker,
		// One bad session never takes the server down (as lifecycle
		// keeps a panic before the relay to its connection).
		Panicked: func(v any, stack []byte) {
			c.Event(c.srv.baseCtx, c.srv.opts.Logger, slog.LevelError, "connection panic", slog.Any("err", v), slog.String("stack", string(stack)))
		},
	}
	relay.Start(s.ctx, s.client, s.up, opts, func(st relay.Stats) {
		defer done() // the connection ends in lifecycle's set whatever happens here
		s.release()
		c.Outcome = observe.OutcomeRelayed
		c.BytesIn, c.BytesOut, c.Ended = st.BytesIn, st.BytesOut, st.EndedBy
		c.finish()
	})
}

// countCommand counts one pre-login command and reports whether the bound
// was passed, in which case the client has been told and the connection
// ends.
func (c *conn) countCommand() bool {
	c.commands++
	return c.commands > c.srv.opts.MaxCommands && c.bye("too_many_commands", "Too many commands before login")
}

// readFailed ends the connection after a read error: the client left, the
// pre-login time ran out, or Shutdown woke the read up.
func (c *conn) readFailed(err error) {
	var ne net.Error
	switch {
	case c.isClosing():
		c.bye("shutdown", "Server shutting down")
	case errors.As(err, &ne) && ne.Timeout():
		c.bye("timeout", "Autologout: no login within the time allowed")
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		c.Ended = "client"
	default:
		c.Ended = "error"
	}
}

// dispatch runs one command; it reports whether the connection is done.
func (c *conn) dispatch(cmd *command) bool {
	switch cmd.name {
	case "CAPABILITY":
		return c.reply("* CAPABILITY " + c.caps() + "\r\n" + cmd.tag + " OK CAPABILITY completed\r\n")
	case "NOOP":
		return c.reply(cmd.tag + " OK NOOP completed\r\n")
	case "LOGOUT":
		c.write([]byte("* BYE Logging out\r\n" + cmd.tag + " OK LOGOUT completed\r\n"))
		c.Ended = "logout"
		return true
	case "ID":
		return c.handleID(cmd)
	case "STARTTLS":
		return c.handleStartTLS(cmd)
	case "LOGIN":
		return c.handleLogin(cmd)
	case "AUTHENTICATE":
		return c.handleAuthenticate(cmd)
	}
	return c.reply(cmd.tag + " BAD Command unknown or not allowed before login\r\n")
}

// reply writes s and reports whether the connection is done (the write
// failed).
func (c *conn) reply(s string) bool {
	if err := c.write([]byte(s)); err != nil {
		c.Ended = "client"
		return true
	}
	return false
}

// plaintextOK reports whether the client may send a password now.
func (c *conn) plaintextOK() bool {
	return c.isTLS || c.srv.opts.Decider.PlaintextAllowed(c.RemoteAddr, false)
}

// caps returns the capability list for the connection's current state.
func (c *conn) caps() string {
	caps := "IMAP4rev1 IMAP4rev2 SASL-IR ID LITERAL+"
	if !c.isTLS && c.srv.opts.TLSConfig != nil {
		caps += " STARTTLS"
	}
	if c.plaintextOK() {
		return caps + " AUTH=PLAIN AUTH=LOGIN"
	}
	return caps + " LOGINDISABLED"
}

// continueLiteral is the reader's hook before a synchronising literal: it
// refuses a LOGIN literal that would carry a secret in clear, so the
// client never sends it, and otherwise sends "+ Ready".
func (c *conn) continueLiteral(sofar []token) error {
	if len(sofar) >= 2 && !c.plaintextOK() &&
		(strings.EqualFold(string(sofar[1].val), "LOGIN") || strings.EqualFold(string(sofar[1].val), "AUTHENTICATE")) {
		return &replyError{tag: tagOf(sofar), status: "NO", text: privacyRequired}
	}
	return c.write([]byte("+ Ready\r\n"))
}

const privacyRequired = "[PRIVACYREQUIRED] Use STARTTLS before logging in."

// handleID answers a pre-login ID (RFC 2971) and keeps the client's fields.
func (c *conn) handleID(cmd *command) bool {
	fields, ok := parseID(cmd.args)
	if !ok {
		return c.reply(cmd.tag + " BAD Invalid ID arguments\r\n")
	}
	c.clientID = fields
	return c.reply("* ID (\"name\" \"passgate\")\r\n" + cmd.tag + " OK ID completed\r\n")
}

// handleStartTLS upgrades the connection. Whatever the client sent after
// the STARTTLS line is discarded (command injection, CVE-2011-0411 and
// kin): only bytes read through TLS are commands.
func (c *conn) handleStartTLS(cmd *command) bool {
	switch {
	case len(cmd.args) > 0:
		return c.reply(cmd.tag + " BAD STARTTLS takes no arguments\r\n")
	case c.isTLS:
		return c.reply(cmd.tag + " BAD TLS is already active\r\n")
	case c.srv.opts.TLSConfig == nil:
		return c.reply(cmd.tag + " BAD STARTTLS is not available\r\n")
	}
	c.br.Discard(c.br.Buffered())
	if c.reply(cmd.tag+" OK Begin TLS negotiation now\r\n") || !c.handshake() {
		return true
	}
	c.br = bufio.NewReaderSize(c.nc, readBufferSize)
	// What was learned before TLS may have been injected by a man in the
	// middle (RFC 3501 6.2.1): forget the client's ID.
	c.clientID = nil
	return false
}

// handshake runs the server side of a TLS handshake on the raw connection
// and reports whether it succeeded; it leaves the pre-login deadline
// armed.
//
// The handshake is bounded by a deadline on the connection, not by a
// context: Shutdown and Close interrupt it through the connection too (a
// read deadline in the past, or closing it), and a context derived from
// the connection's would leave the latter holding a map of children for
// the rest of the session (an idle session's memory).
func (c *conn) handshake() bool {
	relay.BeginTLS(c.raw) // its reads now stop at the end of a record
	tc := tls.Server(c.raw, c.srv.opts.TLSConfig)
	d := time.Now().Add(handshakeTimeout)
	if c.deadline.Before(d) {
		d = c.deadline
	}
	c.armDeadlineAt(d)
	err := tc.Handshake()
	c.armDeadline()
	if err != nil {
		c.Ended = "tls_handshake_failed"
		c.Event(c.ctx, c.srv.opts.Logger, slog.LevelDebug, "tls handshake failed", slog.Any("err", err))
		return false
	}
	st := tc.ConnectionState()
	c.nc = tc
	c.isTLS = true
	c.tlsVer = tls.VersionName(st.Version)
	c.tlsSuite = tls.CipherSuiteName(st.CipherSuite)
	return true
}

// finish closes what is left and writes the session's log line.
func (c *conn) finish() {
	c.cancel(nil)
	c.raw.Close()
	if c.Ended == "" {
		c.Ended = "error"
	}
	if c.Outcome == "" && c.failures > 0 {
		c.Outcome = observe.OutcomeFailed
	}
	c.Log(c.srv.baseCtx, c.srv.opts.Logger, c.srv.opts.Conns, "imap session",
		slog.String("tls_version", c.tlsVer), slog.String("tls_cipher", c.tlsSuite))
}

// standardIDField reports whether name is a standard ID field (RFC 2971),
// kept from a client's ID. Others, the x-originating-* fields above all,
// are dropped: forwarded to an upstream that trusts passgate, they would
// let a client choose its own address.
func standardIDField(name string) bool {
	switch name {
	case "name", "version", "os", "os-version", "vendor",
		"support-url", "address", "date", "command", "arguments", "environment":
		return true
	}
	return false
}

// Bounds of RFC 2971 on an ID.
const (
	maxIDPairs    = 30
	maxIDKeyLen   = 30
	maxIDValueLen = 1024
)

// parseID reads "NIL" or "(key value ...)" and returns the standard fields
// with printable values. ok is false on a syntax error and on an ID past
// the bounds of RFC 2971.
func parseID(args []token) (fields []IDField, ok bool) {
	isNIL := func(t token) bool { return t.kind == tokAtom && strings.EqualFold(string(t.val), "NIL") }
	isString := func(t token) bool { return t.kind == tokQuoted || t.kind == tokLiteral }
	if len(args) == 1 && isNIL(args[0]) {
		return nil, true
	}
	if len(args) < 2 || args[0].kind != tokOpen || args[len(args)-1].kind != tokClose {
		return nil, false
	}
	inner := args[1 : len(args)-1]
	if len(inner)%2 != 0 || len(inner)/2 > maxIDPairs {
		return nil, false
	}
	for i := 0; i < len(inner); i += 2 {
		k, v := inner[i], inner[i+1]
		if !isString(k) || !(isString(v) || isNIL(v)) || len(k.val) > maxIDKeyLen || len(v.val) > maxIDValueLen {
			return nil, false
		}
		if name := strings.ToLower(string(k.val)); isString(v) && printable(v.val) && standardIDField(name) {
			fields = append(fields, IDField{Name: name, Value: string(v.val)})
		}
	}
	return fields, true
}

// clientName makes a short client name ("Thunderbird 128.0") from ID fields.
func clientName(fields []IDField) string {
	var name, version string
	for _, f := range fields {
		switch f.Name {
		case "name":
			name = f.Value
		case "version":
			version = f.Value
		}
	}
	s := strings.TrimSpace(name + " " + version)
	if len(s) > 128 {
		s = s[:128]
	}
	return s
}

// printable reports whether b has no control characters.
func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// sanitizeLine cuts s at its first CR or LF, so that an upstream's text
// can never add a line of its own to the client's reply.
func sanitizeLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	return s
}
