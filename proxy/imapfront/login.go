package imapfront

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/connlimit"
	"github.com/passgate/passgate/proxy/relay"
)

// The replies of a login, fixed so that every failure looks the same.
const (
	replyAuthFailed  = "NO [AUTHENTICATIONFAILED] Authentication failed."
	replyUnavailable = "NO [UNAVAILABLE] Authentication service unavailable, try again later."
	replyCancelled   = "BAD Authentication cancelled"
	replyBadBase64   = "BAD Invalid base64 in SASL response"
)

// SASL LOGIN prompts: base64 of "Username:" and "Password:".
const (
	promptUsername = "VXNlcm5hbWU6"
	promptPassword = "UGFzc3dvcmQ6"
)

// handleLogin runs the LOGIN command.
func (c *conn) handleLogin(cmd *command) bool {
	if len(cmd.args) != 2 || !cmd.args[0].isString() || !cmd.args[1].isString() {
		return c.reply(cmd.tag + " BAD LOGIN expects a user name and a password\r\n")
	}
	if !c.plaintextOK() {
		c.refusePlaintext(cmd.args[0].val)
		return c.reply(cmd.tag + " NO " + privacyRequired + "\r\n")
	}
	return c.login(cmd.tag, cmd.args[0].val, cmd.args[1].val)
}

// handleAuthenticate runs AUTHENTICATE PLAIN or LOGIN, with or without an
// initial response (SASL-IR).
func (c *conn) handleAuthenticate(cmd *command) bool {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != tokAtom ||
		(len(cmd.args) == 2 && cmd.args[1].kind != tokAtom) {
		return c.reply(cmd.tag + " BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n")
	}
	if !c.plaintextOK() {
		// Refused before any continuation: the secret is never asked
		// for. An initial response has sent it already: that is audited.
		if len(cmd.args) == 2 {
			c.refusePlaintext(nil)
		}
		return c.reply(cmd.tag + " NO " + privacyRequired + "\r\n")
	}
	var ir []byte // the initial response; nil when none (an atom is never empty)
	if len(cmd.args) == 2 {
		ir = cmd.args[1].val
	}
	switch strings.ToUpper(string(cmd.args[0].val)) {
	case "PLAIN":
		resp, done, ok := c.saslStep(cmd.tag, ir, "")
		if !ok {
			return done
		}
		parts := bytes.Split(resp, []byte{0}) // RFC 4616: authzid NUL authcid NUL password
		if len(parts) != 3 {
			return c.reply(cmd.tag + " BAD Invalid PLAIN response\r\n")
		}
		if len(parts[0]) > 0 && !bytes.Equal(parts[0], parts[1]) {
			// Acting as another user (the authzid) is not offered to clients.
			return c.failNoDecision(cmd.tag, parts[1], "authorization identity differs from the user")
		}
		return c.login(cmd.tag, parts[1], parts[2])
	case "LOGIN":
		user, done, ok := c.saslStep(cmd.tag, ir, promptUsername)
		if !ok {
			return done
		}
		pw, done, ok := c.saslStep(cmd.tag, nil, promptPassword)
		if !ok {
			return done
		}
		return c.login(cmd.tag, user, pw)
	}
	return c.reply(cmd.tag + " NO Unsupported authentication mechanism\r\n")
}

// saslStep returns one decoded client response: the initial response ir
// when not nil, else what the client answers to "+ prompt". ok is false
// when the exchange ended (cancel, bad base64, read error); done then says
// whether the connection is done.
func (c *conn) saslStep(tag string, ir []byte, prompt string) (resp []byte, done, ok bool) {
	line := ir
	if ir == nil {
		if c.reply("+ " + prompt + "\r\n") {
			return nil, true, false
		}
		l, err := readLine(c.br, c.srv.opts.MaxLineLength, nil)
		if errors.Is(err, errLineTooLong) {
			c.write([]byte(tag + " BAD [TOOBIG] Response too long\r\n* BYE Closing connection\r\n"))
			c.Ended = "line_too_long"
			return nil, true, false
		}
		if err != nil {
			c.readFailed(err)
			return nil, true, false
		}
		line = l
	}
	switch string(line) {
	case "*":
		return nil, c.reply(tag + " " + replyCancelled + "\r\n"), false
	case "=":
		return []byte{}, false, true
	}
	dec, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil { // unpadded, then
		dec, err = base64.RawStdEncoding.DecodeString(string(line))
	}
	if err != nil {
		return nil, c.reply(tag + " " + replyBadBase64 + "\r\n"), false
	}
	return dec, false, true
}

// refusePlaintext records a login refused because its credentials came
// without TLS from an untrusted network: the decision's step 1 denies it
// and audits it (the client has sent a password in clear, which the
// operator should know), without any lookup.
func (c *conn) refusePlaintext(user []byte) {
	if len(user) > 0 {
		c.User = sanitizeLog(string(user))
	}
	l, _ := c.srv.opts.Decider.Decide(c.ctx, c.attempt(user, nil))
	l.Finish(c.ctx, policy.NotAsked)
}

// attempt builds the policy.Attempt for a login.
func (c *conn) attempt(user, secret []byte) policy.Attempt {
	return policy.Attempt{
		Proto:      policy.IMAP,
		User:       string(user),
		Secret:     policy.Secret(secret),
		Client:     c.RemoteAddr,
		TLS:        c.isTLS,
		ClientName: clientName(c.clientID),
		Received:   time.Now(),
	}
}

// reply is the tagged reply (after the tag) of a login that did not
// succeed, by class.
func reply(class policy.Class) string {
	switch class {
	case policy.ClassTemporary:
		return replyUnavailable
	case policy.ClassNeedTLS:
		return "NO " + privacyRequired
	}
	return replyAuthFailed
}

// failNoDecision denies a login that cannot be asked of the decision (a
// user name with control characters, a foreign authzid) with the uniform
// failure after the uniform delay.
func (c *conn) failNoDecision(tag string, user []byte, reason string) bool {
	a := c.attempt(user, nil)
	c.User = sanitizeLog(a.User)
	a.User = c.User
	return c.answer(tag, c.srv.opts.Decider.Undecided(a, reason), policy.NotAsked)
}

// answer finishes a login that did not succeed, sends its failure reply,
// counts it and closes the connection after MaxAuthFailures. It reports
// whether the connection is done.
func (c *conn) answer(tag string, l *policy.Login, r policy.Result) bool {
	c.noteLogin(l)
	msg := tag + " " + reply(l.Finish(c.ctx, r)) + "\r\n"
	if c.isClosing() {
		return c.bye("shutdown", "Server shutting down")
	}
	c.failures++
	over := c.failures >= c.srv.opts.MaxAuthFailures
	if over {
		msg += "* BYE Too many authentication failures\r\n"
	}
	// The decision and the failure delay may have used up the pre-login
	// time: the reply still gets a short write deadline of its own, and
	// the next read times out at once if the time is over.
	c.raw.SetWriteDeadline(time.Now().Add(byeTimeout))
	done := c.reply(msg)
	c.armDeadline()
	if !done && over {
		c.Ended = "auth_failures"
	}
	return done || over
}

// noteLogin keeps the credential of a login for the session line, also
// of a refused one (an app password refused for its scope).
func (c *conn) noteLogin(l *policy.Login) {
	if l.Credential() != policy.NoCredential {
		c.Credential = l.Describe()
	}
}

// login runs the decision and the upstream login; after a successful one
// it leaves the session to relay in c.loggedIn. It reports whether the
// pre-login phase is done.
func (c *conn) login(tag string, user, secret []byte) bool {
	if !printable(user) {
		return c.failNoDecision(tag, user, "user name with control characters")
	}
	a := c.attempt(user, secret)
	c.User = a.User
	lctx, cancel := context.WithTimeout(c.ctx, loginTimeout)
	defer cancel()

	// The upstream connection is opened (or taken ready) before the
	// decision, and carries no credentials until the decision allows the
	// login. An upstream that cannot be reached is answered here, without
	// a decision: the same temporary failure after the same uniform delay
	// whatever the secret, and no success in the audit for a login that
	// could never reach the upstream (see openUpstream). A wrong secret
	// answered so is not counted by the lockout: it was never decided.
	pending, err := c.openUpstream(lctx)
	if err != nil {
		c.Event(c.ctx, c.srv.opts.Logger, slog.LevelWarn, "upstream login failed", slog.String("user", a.User), slog.Any("err", err))
		return c.answer(tag, c.srv.opts.Decider.Undecided(a, "upstream unavailable before the decision"), policy.Unreachable(err))
	}
	l, err := c.srv.opts.Decider.Decide(lctx, a)
	if err != nil {
		c.Event(c.ctx, c.srv.opts.Logger, slog.LevelWarn, "auth decision failed", slog.String("user", a.User), slog.Any("err", err))
	}
	if !l.Allowed() {
		if pending != nil {
			pending.Close() // without a word to the upstream
		}
		return c.answer(tag, l, policy.NotAsked)
	}
	primary := l.Credential() == policy.Primary
	req := LoginRequest{
		User:     l.User(),
		Primary:  primary,
		Client:   c.RemoteAddr,
		ClientID: c.clientID,
	}
	if primary {
		req.Password = a.Secret
	}
	var up net.Conn
	var okText string
	if pending != nil {
		up, okText, err = pending.Login(lctx, req)
	} else {
		up, okText, err = c.srv.opts.Upstream.Login(lctx, req)
	}
	if err != nil {
		if errors.Is(err, ErrUpstreamRefused) {
			return c.answer(tag, l, policy.Refused)
		}
		// Residual: the upstream answered the connection's set-up (or a
		// ready connection looked alive) and then failed the login itself
		// (it went down in between, a ready connection's server vanished
		// without a word, or it answered NO [UNAVAILABLE]). The decision
		// has allowed the login by now, so the client gets a temporary
		// failure where a wrong secret got the uniform refusal.
		c.Event(c.ctx, c.srv.opts.Logger, slog.LevelWarn, "upstream login failed", slog.String("user", a.User), slog.Any("err", err))
		return c.answer(tag, l, policy.Unreachable(err))
	}
	l.Finish(c.ctx, policy.Accepted)
	connlimit.LoggedIn(c.raw) // a session now: no longer capped as a pre-login connection
	c.User = req.User
	c.noteLogin(l)

	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		up.Close()
		return c.bye("shutdown", "Server shutting down")
	}
	c.relaying = true
	c.mu.Unlock()

	okText = cmp.Or(sanitizeLine(okText), "OK Logged in")
	c.raw.SetDeadline(time.Time{})
	c.raw.SetWriteDeadline(time.Now().Add(loginTimeout))
	if c.reply(tag + " " + okText + "\r\n") {
		up.Close()
		return true
	}
	c.raw.SetWriteDeadline(time.Time{})
	// The session's context is the connection's own (no child context
	// for the relay to hold through hours of IDLE): the registry ends it
	// with revoke.ErrRevoked.
	release := c.srv.opts.Relays.Register(l.AppPasswordID(), c.cancel)
	client := relay.WithBuffered(c.nc, c.br)
	c.br = nil       // the relay reads the connection itself from now on
	c.clientID = nil // forwarded already; an idle session keeps nothing of the login
	// serve runs the relay once the login's frames have returned.
	c.loggedIn = &session{ctx: c.ctx, release: release, client: client, up: up}
	return true
}

// sanitizeLog keeps a user name that failed printable() readable in a log.
func sanitizeLog(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// EarlyUpstream is an Upstream that can open its connection before the
// credentials are decided. The listener opens it (or takes a ready one,
// ReadyUpstream) before the decision, and logs in on it once the decision
// allows the login; a refused login closes it without a word to the
// upstream. An upstream that cannot be reached is thus known before the
// decision, and every login then gets the same temporary failure after
// the same delay, whatever its secret. A plain Upstream learns that only
// after the decision: with it, an allowed login gets a temporary failure
// where a refused one gets the uniform refusal, which tells a right
// secret from a wrong one while the upstream is down (cmd wires an
// EarlyUpstream; the plain one is for tests and embedders).
type EarlyUpstream interface {
	Upstream
	// Open connects to the upstream for the client at client, whose own
	// ID fields are clientID, and sends nothing but the connection's
	// set-up: never a credential. An error means the upstream is
	// unavailable (as for Login). Cancelling ctx interrupts Open; the
	// connection it returned outlives ctx.
	Open(ctx context.Context, client netip.AddrPort, clientID []IDField) (PendingUpstream, error)
}

// ReadyUpstream is an EarlyUpstream that may keep connections opened ahead
// of any client. The listener asks it first: a connection handed out at
// once spares the login the wait for Open, and Open runs only when none
// is ready.
type ReadyUpstream interface {
	EarlyUpstream
	// OpenReady returns a connection set up ahead of any client and
	// introduced for this one as Open introduces it (never a credential),
	// or ok false when none is ready. It must not wait for the upstream.
	// It should hand out only connections that still look alive (not
	// closed by the upstream): one that fails at Login fails after the
	// decision has allowed the login.
	OpenReady(ctx context.Context, client netip.AddrPort, clientID []IDField) (p PendingUpstream, ok bool)
}

// PendingUpstream is a connection opened by EarlyUpstream.Open. Exactly
// one of Login and Close is called, once.
type PendingUpstream interface {
	// Login logs in on the connection as Upstream.Login does (the
	// request's Client and ClientID are those given to Open).
	Login(ctx context.Context, req LoginRequest) (net.Conn, string, error)
	// Close closes the connection without logging in. It must not block
	// on the upstream.
	Close() error
}

// openUpstream returns the upstream connection for this login, set up
// and without credentials: a ready one when the Upstream has one at hand
// (no wait), else one opened now. It returns nil and no error when the
// Upstream cannot open connections ahead of the login (the login then
// dials after the decision). An error means the upstream cannot be
// reached; ctx bounds the wait, not the connection.
//
// Opening waits for the upstream before the decision (connect, greeting,
// TLS, capabilities: the cost of a login without a ready connection is
// now the open plus the decision, not the longer of the two). Running
// the decision meanwhile would tell a right secret from a wrong one when
// the open fails: the decision audits an app password's success at once,
// and an allowed login would get the temporary failure while a refused
// one got the uniform refusal.
func (c *conn) openUpstream(ctx context.Context) (PendingUpstream, error) {
	eu, ok := c.srv.opts.Upstream.(EarlyUpstream)
	if !ok {
		return nil, nil
	}
	client, id := c.RemoteAddr, c.clientID
	if ru, ok := eu.(ReadyUpstream); ok {
		if p, ok := ru.OpenReady(ctx, client, id); ok {
			return p, nil
		}
	}
	p, err := eu.Open(ctx, client, id)
	if err != nil {
		return nil, fmt.Errorf("imapfront: open the upstream connection: %w", err)
	}
	return p, nil
}
