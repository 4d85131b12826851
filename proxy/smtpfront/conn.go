package smtpfront

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/backends/sockwire"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
)

// errPreLoginInput is returned by a connection's Read when a client sends
// more before AUTH than its commands could need.
var errPreLoginInput = errors.New("smtpfront: too much input before AUTH")

// trackedConn is one client connection, under any TLS layer. It enforces
// the pre-login bounds (every read deadline is clamped to the pre-login
// deadline, and the bytes read are budgeted, until AUTH succeeds), keeps
// the session's bookkeeping, and logs one line when it closes. The
// connection's goroutine uses it; Server.Close and a revocation close it
// (and its upstream) from theirs.
type trackedConn struct {
	net.Conn
	s        *Server
	preUntil time.Time
	budget   int64

	authed          atomic.Bool
	closeAfterWrite atomic.Bool // the connection closes after the reply being written
	// draining asks the connection to end before its next command
	// (Shutdown); waiting tells that it is waiting for one now.
	draining, waiting atomic.Bool
	preBytes          atomic.Int64
	commands          atomic.Int64 // before AUTH

	// line is the session log line: ConnID, Proto, RemoteAddr and Start
	// are set at accept; the other fields are guarded by mu.
	line observe.Session

	mu         sync.Mutex // guards line and the fields below
	tlsVersion string     // "" without TLS
	upstream   string
	messages   int
	failures   int
	release    func()
	up         UpstreamSession // the logged-in upstream connection, for closeUpstream

	closeOnce sync.Once
}

// track registers an accepted connection. It returns nil, and the caller
// closes c, once the server is shutting down.
func (s *Server) track(c net.Conn) *trackedConn {
	now := time.Now()
	tc := &trackedConn{
		Conn:     sockwire.NewSocket(c, nil),
		s:        s,
		preUntil: now.Add(s.o.PreLoginTimeout),
		budget:   int64(s.o.MaxCommands)*int64(s.o.MaxLineLength+2)/4 + preLoginSlack,
		line:     observe.Session{ConnID: s.nextID.Add(1), Proto: policy.SMTP.String(), RemoteAddr: lifecycle.ClientAddr(c), Start: now},
	}
	_ = c.SetReadDeadline(tc.preUntil)
	if !s.set.Add(tc) {
		// Close or Shutdown is waiting for the connections it knows of:
		// a late one is refused, never added to the wait group.
		return nil
	}
	observe.Opened(s.o.Conns)
	return tc
}

func (c *trackedConn) clamp(t time.Time) time.Time {
	if c.authed.Load() {
		return t
	}
	if t.IsZero() || t.After(c.preUntil) {
		return c.preUntil
	}
	return t
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t))
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetReadDeadline(c.clamp(t))
}

// Read reads, and counts the bytes against the pre-login budget until
// AUTH succeeds.
func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.authed.Load() && c.preBytes.Add(int64(n)) > c.budget {
		return 0, errPreLoginInput
	}
	return n, err
}

// setUpstream records the session's upstream connection (nil when it
// ends), which Server.Close closes.
func (c *trackedConn) setUpstream(up UpstreamSession) {
	c.mu.Lock()
	c.up = up
	c.mu.Unlock()
}

// closeUpstream closes the upstream connection, if any, to abort what
// the session is doing with it (Server.Close).
func (c *trackedConn) closeUpstream() {
	c.mu.Lock()
	up := c.up
	c.mu.Unlock()
	if up != nil {
		_ = up.Close()
	}
}

// login marks the connection logged in: the pre-login bounds no longer
// apply.
func (c *trackedConn) login(user, credential, upstream string) {
	c.mu.Lock()
	c.line.User, c.line.Credential, c.upstream, c.line.Outcome = user, credential, upstream, observe.OutcomeRelayed
	c.mu.Unlock()
	c.authed.Store(true)
}

// tried records the user (and, when one matched, the credential) of a
// login that is under way or failed, for the session line.
func (c *trackedConn) tried(user string, credential ...string) {
	c.mu.Lock()
	c.line.User = user
	if len(credential) > 0 {
		c.line.Credential = credential[0]
	}
	c.mu.Unlock()
}

// trackRevocation closes the connection when the app password id is
// deleted.
func (c *trackedConn) trackRevocation(id int64) {
	if c.s.o.Sessions == nil || id == 0 {
		return
	}
	ctx, release := c.s.o.Sessions.Track(c.s.ctx, id)
	stop := context.AfterFunc(ctx, func() {
		if context.Cause(ctx) != context.Canceled {
			c.mu.Lock()
			c.line.Ended = "revoked"
			c.mu.Unlock()
			c.Conn.Close()
		}
	})
	c.mu.Lock()
	c.release = func() { stop(); release() }
	c.mu.Unlock()
}

// drain asks the connection to end with a 421 before its next command
// (Server.Shutdown); one waiting for a command now is woken up. A
// session inside a message, or waiting for the upstream, goes on until
// the message's reply.
func (c *trackedConn) drain() {
	c.draining.Store(true)
	// The connection sets waiting after its read deadline and before it
	// looks at draining, so either it sees draining, or this sees
	// waiting and the deadline below is the last one set.
	if c.waiting.Load() {
		_ = c.Conn.SetReadDeadline(time.Now())
	}
}

// setEnded records why the session ended, for its log line.
func (c *trackedConn) setEnded(why string) {
	c.mu.Lock()
	c.line.Ended = why
	c.mu.Unlock()
}

func (c *trackedConn) setOutcome(o string) {
	c.mu.Lock()
	c.line.Outcome = o
	c.mu.Unlock()
}

// command counts a command before AUTH and reports whether the limit is
// passed: the connection then closes after the next reply.
func (c *trackedConn) command() bool {
	over := !c.authed.Load() && c.commands.Add(1) > int64(c.s.o.MaxCommands)
	if over {
		c.closeAfterWrite.Store(true)
	}
	return over
}

// failure counts a failed AUTH; once the limit is reached, the connection
// closes after the next reply.
func (c *trackedConn) failure() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures++
	if c.line.Outcome != observe.OutcomeRelayed {
		c.line.Outcome = observe.OutcomeFailed
	}
	if c.failures >= c.s.o.MaxAuthFailures {
		c.closeAfterWrite.Store(true)
	}
}

func (c *trackedConn) message(n int64, ok bool) {
	c.mu.Lock()
	c.line.BytesIn += n
	if ok {
		c.messages++
	}
	c.mu.Unlock()
}

func (c *trackedConn) setTLS(state tls.ConnectionState) {
	c.mu.Lock()
	c.tlsVersion = tls.VersionName(state.Version)
	c.mu.Unlock()
}

// Close closes the connection once and logs the session.
func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.mu.Lock()
		release := c.release
		line := c.line
		if line.Ended == "" && c.s.ctx.Err() != nil {
			line.Ended = "shutdown"
		} else if line.Ended == "" {
			line.Ended = "client"
		}
		extra := []slog.Attr{slog.String("listener", c.s.o.Listener), slog.Bool("tls", c.tlsVersion != ""),
			slog.String("upstream", c.upstream), slog.Int("messages", c.messages)}
		if c.tlsVersion != "" {
			extra = append(extra, slog.String("tls_version", c.tlsVersion))
		}
		c.mu.Unlock()
		if release != nil {
			release()
		}
		line.Log(context.Background(), c.s.o.Logger, c.s.o.Conns, "smtp session", extra...)
		observe.Closed(c.s.o.Conns)
		c.s.set.Done(c)
	})
	return err
}
