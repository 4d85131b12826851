package smtpfront

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// errThreshold is how many protocol errors (unknown or malformed
// commands) a connection may make; the next one closes it, as in
// go-smtp's server.
const errThreshold = 3

// conn is the server side of one client connection: passgate's own SMTP
// server loop, which replaced go-smtp's server. It reads a command at a
// time (replies are held back until the next read would wait, so that
// pipelined commands get their replies in one write), answers the
// commands that need no upstream itself, and hands the others to its
// session. Everything runs on the connection's goroutine; another
// goroutine only closes the connection (Server.Close, revocation).
type conn struct {
	s  *Server
	tc *trackedConn
	nc net.Conn // tc, or the TLS connection over it
	r  *reader

	wbuf    []byte // replies not yet written
	closing bool   // close after the replies written so far

	// dataMode pushes the read deadline forward as message data arrives,
	// so a long upload is bounded by its pauses, not its length.
	dataMode bool
	extended time.Time

	helo         string
	sess         *session // from the first HELO/EHLO until STARTTLS or the end
	errCount     int
	didAuth      bool
	fromReceived bool
	recipients   int
	bdatActive   bool  // a BDAT message is open (also before its first byte)
	bdatBytes    int64 // the sizes of its chunks so far
}

// serve runs the connection until it ends, then closes it.
func (c *conn) serve() {
	defer c.close()
	defer func() {
		if r := recover(); r != nil {
			c.s.o.Logger.Error("smtp connection panicked", slog.Uint64("conn_id", c.tc.line.ConnID), slog.Any("err", r), slog.String("stack", string(debug.Stack())))
			c.reply(421, smtp.EnhancedCode{4, 0, 0}, "Internal server error")
		}
	}()
	if tlsConn, ok := c.nc.(*tls.Conn); ok {
		// Implicit TLS: the handshake is bounded by the pre-login
		// deadline too.
		_ = c.tc.SetReadDeadline(time.Now().Add(c.s.o.ReadTimeout))
		_ = c.tc.SetWriteDeadline(time.Now().Add(c.s.o.WriteTimeout))
		if err := tlsConn.HandshakeContext(c.s.ctx); err != nil {
			c.s.o.Logger.Debug("smtp tls handshake failed", slog.Uint64("conn_id", c.tc.line.ConnID), slog.Any("err", err))
			return
		}
	}
	c.reply(220, smtp.NoEnhancedCode, fmt.Sprintf("%v ESMTP Service Ready", c.s.o.Hostname))
	for !c.done() {
		line, err := c.readCommand()
		if err != nil {
			c.readFailed(err)
			return
		}
		c.dispatch(line)
	}
}

// done reports whether the connection is to close after the replies
// queued so far.
func (c *conn) done() bool { return c.closing || c.tc.closeAfterWrite.Load() }

// dispatch parses and runs one command line.
func (c *conn) dispatch(line string) {
	cmd, arg, err := parseCmd(line)
	if err != nil {
		c.protocolError(501, smtp.EnhancedCode{5, 5, 2}, "Bad command")
		return
	}
	c.handle(cmd, arg)
}

// readFailed answers a failed read of a command (or of message data,
// after the message's own reply): nothing once the client is gone, 421
// once Shutdown asked the connection to end.
func (c *conn) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errDraining) || c.tc.draining.Load() && errors.As(err, &ne) && ne.Timeout():
		// Shutdown asked the connection to end, and woke up its read.
		c.tc.setEnded("shutdown")
		c.reply(421, smtp.EnhancedCode{4, 3, 2}, "Server shutting down")
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed):
	case errors.Is(err, errTooLongLine):
		c.reply(500, smtp.EnhancedCode{5, 4, 0}, "Too long line, closing connection")
	case errors.As(err, &ne) && ne.Timeout():
		c.reply(421, smtp.EnhancedCode{4, 4, 2}, "Idle timeout, bye bye")
	default:
		c.s.o.Logger.Debug("smtp read failed", slog.Uint64("conn_id", c.tc.line.ConnID), slog.Any("err", err))
		c.reply(421, smtp.EnhancedCode{4, 4, 0}, "Connection error, sorry")
	}
}

// handle runs one parsed command.
func (c *conn) handle(cmd, arg string) {
	// Every command before AUTH counts, those that passgate answers
	// itself (NOOP, VRFY, HELP…) too, so that a client cannot spend the
	// pre-login time on them without limit; the one over the limit gets
	// 421 and the connection closes. QUIT is always answered. STARTTLS
	// counts too: each one may cost a TLS handshake with a signature,
	// and a refused or failed one leaves the session in clear, to try
	// again.
	if cmd != "QUIT" && c.tc.command() {
		c.replyError(421, smtp.EnhancedCode{4, 7, 0}, errTooMany())
		return
	}
	switch cmd {
	case "":
		c.protocolError(500, smtp.EnhancedCode{5, 5, 2}, "Error: bad syntax")
	case "SEND", "SOML", "SAML", "EXPN", "HELP", "TURN":
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, fmt.Sprintf("%v command not implemented", cmd))
	case "HELO", "EHLO":
		c.handleGreet(cmd == "EHLO", arg)
	case "LHLO":
		c.reply(500, smtp.EnhancedCode{5, 5, 1}, "This is not a LMTP server")
	case "MAIL":
		c.handleMail(arg)
	case "RCPT":
		c.handleRcpt(arg)
	case "VRFY":
		c.reply(252, smtp.EnhancedCode{2, 5, 0}, "Cannot VRFY user, but will accept message")
	case "NOOP":
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "I have successfully done nothing")
	case "RSET":
		c.reset()
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, "Session reset")
	case "BDAT":
		c.handleBdat(arg)
	case "DATA":
		c.handleData(arg)
	case "QUIT":
		c.reply(221, smtp.EnhancedCode{2, 0, 0}, "Bye")
		c.closing = true
	case "AUTH":
		c.handleAuth(arg)
	case "STARTTLS":
		c.handleStartTLS()
	default:
		c.protocolError(500, smtp.EnhancedCode{5, 5, 2}, fmt.Sprintf("Syntax errors, %v command unrecognized", cmd))
	}
}

// protocolError answers a malformed or unknown command; after
// errThreshold of them the connection closes.
func (c *conn) protocolError(code int, ec smtp.EnhancedCode, msg string) {
	c.reply(code, ec, msg)
	c.errCount++
	if c.errCount > errThreshold {
		c.reply(500, smtp.EnhancedCode{5, 5, 1}, "Too many errors. Quiting now")
		c.closing = true
	}
}

// isTLS reports whether the connection runs under TLS.
func (c *conn) isTLS() bool {
	_, ok := c.nc.(*tls.Conn)
	return ok
}

// handleGreet is HELO (enhanced false) and EHLO. The first one opens the
// session; a later one resets it, as RSET does.
func (c *conn) handleGreet(enhanced bool, arg string) {
	domain, err := parseHelloArgument(arg)
	if err != nil {
		c.reply(501, smtp.EnhancedCode{5, 5, 2}, "Domain/address argument required for HELO")
		return
	}
	c.helo = domain
	if c.sess != nil {
		c.reset()
	} else {
		c.sess = c.newSession()
	}
	if !enhanced {
		c.reply(250, smtp.EnhancedCode{2, 0, 0}, fmt.Sprintf("Hello %s", domain))
		return
	}
	caps := []string{"Hello " + domain, "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"}
	if c.s.o.TLSConfig != nil && !c.s.o.ImplicitTLS && !c.isTLS() {
		caps = append(caps, "STARTTLS")
	}
	if mechs := c.sess.authMechanisms(); len(mechs) > 0 {
		caps = append(caps, "AUTH "+strings.Join(mechs, " "))
		if c.s.o.LegacyAuthLine {
			caps = append(caps, "AUTH="+strings.Join(mechs, " "))
		}
	}
	caps = append(caps, fmt.Sprintf("SIZE %v", c.s.o.MaxMessageBytes), fmt.Sprintf("LIMITS RCPTMAX=%v", c.s.o.MaxRecipients))
	c.reply(250, smtp.NoEnhancedCode, caps...)
}

// handleStartTLS upgrades the connection. Whatever the client sent after
// the command in clear is dropped; the session starts again (a new EHLO,
// a new AUTH). It is refused after a successful AUTH.
func (c *conn) handleStartTLS() {
	if c.isTLS() {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "Already running in TLS")
		return
	}
	if c.s.o.TLSConfig == nil || c.s.o.ImplicitTLS {
		c.reply(502, smtp.EnhancedCode{5, 5, 1}, "TLS not supported")
		return
	}
	if c.didAuth {
		// After a plaintext AUTH (trusted networks only), the session is
		// logged in upstream, tracked for revocation and counted as
		// logged in; RFC 3207 lets a server refuse STARTTLS, and a client
		// that wants TLS starts it before AUTH.
		c.reply(503, smtp.EnhancedCode{5, 5, 1}, "STARTTLS not allowed after AUTH")
		return
	}
	c.reply(220, smtp.EnhancedCode{2, 0, 0}, "Ready to start TLS")
	c.flush()
	tlsConn := tls.Server(c.tc, c.s.o.TLSConfig)
	if err := tlsConn.HandshakeContext(c.s.ctx); err != nil {
		// As go-smtp did: the reply goes out in clear, and the session
		// goes on in clear.
		c.s.o.Logger.Debug("smtp starttls handshake failed", slog.Uint64("conn_id", c.tc.line.ConnID), slog.Any("err", err))
		c.reply(550, smtp.EnhancedCode{5, 0, 0}, "Handshake error")
		return
	}
	c.nc = tlsConn
	c.r.reset(tlsConn)
	if c.sess != nil {
		c.sess.logout()
		c.sess = nil
	}
	c.helo = ""
	c.didAuth = false
	c.reset()
}

// reset ends the transaction: RSET, a new EHLO, the end of a message.
func (c *conn) reset() {
	c.bdatActive = false
	c.bdatBytes = 0
	if c.sess != nil {
		c.sess.reset()
	}
	c.fromReceived = false
	c.recipients = 0
}

// errDraining is readCommand's error once Shutdown asked the connection
// to end.
var errDraining = errors.New("smtpfront: server shutting down")

// readCommand reads the next command line as readLine does; once
// Shutdown asked the connection to end (before it or while the read
// waits), it fails with errDraining or a timeout, which readFailed
// answers with a 421.
func (c *conn) readCommand() (string, error) {
	_ = c.tc.SetReadDeadline(time.Now().Add(c.s.o.ReadTimeout))
	c.tc.waiting.Store(true)
	defer c.tc.waiting.Store(false)
	if c.tc.draining.Load() {
		return "", errDraining
	}
	return c.r.readLine()
}

// readLine reads the next line, bounded by the read timeout (and before
// AUTH by the pre-login deadline, which trackedConn enforces).
func (c *conn) readLine() (string, error) {
	_ = c.tc.SetReadDeadline(time.Now().Add(c.s.o.ReadTimeout))
	return c.r.readLine()
}

// beforeRead runs ahead of every read from the network: the replies held
// back leave, and inside a message the read deadline moves forward (at
// most once a second).
func (c *conn) beforeRead() {
	c.flush()
	if c.dataMode {
		if now := time.Now(); now.Sub(c.extended) > time.Second {
			c.extended = now
			_ = c.tc.SetReadDeadline(now.Add(c.s.o.ReadTimeout))
		}
	}
}

// reply queues a reply: code, enhanced code and its lines (the enhanced
// code goes on the last line). smtp.EnhancedCodeNotSet becomes X.0.0 for
// a 2xx, 4xx or 5xx code, as go-smtp wrote it.
func (c *conn) reply(code int, ec smtp.EnhancedCode, text ...string) {
	if ec == smtp.EnhancedCodeNotSet {
		switch cat := code / 100; cat {
		case 2, 4, 5:
			ec = smtp.EnhancedCode{cat, 0, 0}
		default:
			ec = smtp.NoEnhancedCode
		}
	}
	text = strings.Split(strings.Join(text, "\n"), "\n")
	last := len(text) - 1
	for _, t := range text[:last] {
		c.wbuf = strconv.AppendInt(c.wbuf, int64(code), 10)
		c.wbuf = append(c.wbuf, '-')
		c.wbuf = append(c.wbuf, t...)
		c.wbuf = append(c.wbuf, '\r', '\n')
	}
	c.wbuf = strconv.AppendInt(c.wbuf, int64(code), 10)
	c.wbuf = append(c.wbuf, ' ')
	if ec != smtp.NoEnhancedCode {
		c.wbuf = fmt.Appendf(c.wbuf, "%v.%v.%v ", ec[0], ec[1], ec[2])
	}
	c.wbuf = append(c.wbuf, text[last]...)
	c.wbuf = append(c.wbuf, '\r', '\n')
	if len(c.wbuf) > maxWriteBuffer {
		c.flush()
	}
}

// replyError queues err's reply when it is an *smtp.SMTPError, else a
// reply of code and ec with a fixed text: an error's own text (which may
// name passgate's addresses) is for the log, never for the client.
func (c *conn) replyError(code int, ec smtp.EnhancedCode, err error) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		c.reply(se.Code, se.EnhancedCode, se.Message)
		return
	}
	c.s.o.Logger.Debug("smtp command failed", slog.Uint64("conn_id", c.tc.line.ConnID), slog.Any("err", err))
	c.reply(code, ec, "Temporary failure, try again later")
}

// maxWriteBuffer is how much reply text is held back before it is
// written anyway; a buffer grown beyond it is not kept.
const maxWriteBuffer = 16 << 10

// flush writes the replies held back, in one write, under the write
// timeout. A failed write ends the connection.
func (c *conn) flush() {
	if len(c.wbuf) == 0 {
		return
	}
	_ = c.tc.SetWriteDeadline(time.Now().Add(c.s.o.WriteTimeout))
	if _, err := c.nc.Write(c.wbuf); err != nil {
		c.closing = true
	}
	if cap(c.wbuf) > maxWriteBuffer {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
}

// close sends what is held back, ends the session (its 221 has left
// before the upstream's QUIT is waited for) and closes the connection.
func (c *conn) close() {
	c.flush()
	if c.sess != nil {
		c.sess.logout()
		c.sess = nil
	}
	if tlsConn, ok := c.nc.(*tls.Conn); ok {
		// close_notify, under a short deadline.
		_ = c.tc.SetWriteDeadline(time.Now().Add(time.Second))
		_ = tlsConn.Close()
	}
	c.tc.Close()
}

// serveConn runs one accepted connection until it ends.
func (s *Server) serveConn(tc *trackedConn) {
	var nc net.Conn = tc
	if s.o.ImplicitTLS {
		nc = tls.Server(tc, s.o.TLSConfig)
	}
	c := &conn{s: s, tc: tc, nc: nc}
	c.r = newReader(nc, s.o.MaxLineLength, c.beforeRead, &s.bufs)
	c.serve()
}
