package smtpfront

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
)

// errPreLoginInput is returned by a connection's Read when a client sends
// more before AUTH than its commands could need.
var errPreLoginInput = errors.New("smtpfront: too much input before AUTH")

// trackedConn is one client connection, under any TLS layer. It enforces
// the pre-login bounds (every read deadline is clamped to the pre-login
// deadline, and the bytes read are budgeted, until AUTH succeeds), can
// close itself right after the next reply, and logs one line when it
// closes.
type trackedConn struct {
	net.Conn
	s        *Server
	preUntil time.Time
	budget   int64

	authed          atomic.Bool
	closeAfterWrite atomic.Bool
	preBytes        atomic.Int64
	commands        atomic.Int64 // before AUTH

	// line is the session log line: ConnID, Proto, RemoteAddr and Start
	// are set at accept; the other fields are guarded by mu.
	line observe.Session

	mu         sync.Mutex // guards line and the fields below
	tlsVersion string     // "" without TLS
	upstream   string
	messages   int
	failures   int
	release    func()

	closeOnce sync.Once

	// Replies are written to wbuf and sent when the connection is next
	// read, closed, or given an earlier write deadline: go-smtp flushes
	// every line of a reply on its own, which would cost a write (and a
	// TLS record, and a packet) per line of EHLO's reply. A write while a
	// read waits goes out at once.
	wmu       sync.Mutex // guards wbuf, wDeadline and reading's changes to true
	wbuf      []byte
	wDeadline time.Time // the write deadline last set
	reading   atomic.Bool
}

// maxWriteBuffer is what trackedConn holds back before it writes anyway;
// a buffer grown beyond it is not kept for the next reply.
const maxWriteBuffer = 16 << 10

// track registers an accepted connection. It returns nil, and the caller
// closes c, once the server is shutting down.
func (s *Server) track(c net.Conn) *trackedConn {
	now := time.Now()
	tc := &trackedConn{
		Conn:     c,
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

// unwrap finds the trackedConn under go-smtp's connection.
func unwrap(c net.Conn) *trackedConn {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, _ := c.(*trackedConn)
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

// SetWriteDeadline sets the write deadline, after sending what Write held
// back if t comes before the deadline that was set for it (crypto/tls
// pulls the deadline to now once its close_notify is written).
func (c *trackedConn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var err error
	if !t.IsZero() && (c.wDeadline.IsZero() || t.Before(c.wDeadline)) {
		err = c.flushLocked()
	}
	c.wDeadline = t
	return cmp.Or(err, c.Conn.SetWriteDeadline(t))
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if err := c.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.Conn.SetReadDeadline(c.clamp(t))
}

// Read sends what Write held back, and then reads.
func (c *trackedConn) Read(b []byte) (int, error) {
	c.wmu.Lock()
	err := c.flushLocked()
	c.reading.Store(true)
	c.wmu.Unlock()
	if err != nil {
		c.reading.Store(false)
		return 0, err
	}
	n, err := c.Conn.Read(b)
	c.reading.Store(false)
	if !c.authed.Load() && c.preBytes.Add(int64(n)) > c.budget {
		return 0, errPreLoginInput
	}
	return n, err
}

// Write holds b back until the next Read, unless a read is waiting, the
// connection is to close after this reply, or too much is held already.
func (c *trackedConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	closing := c.closeAfterWrite.Load()
	if !closing && !c.reading.Load() && len(c.wbuf)+len(b) <= maxWriteBuffer {
		c.wbuf = append(c.wbuf, b...)
		return len(b), nil
	}
	n := len(b)
	var err error
	if len(c.wbuf) == 0 {
		n, err = c.Conn.Write(b)
	} else {
		c.wbuf = append(c.wbuf, b...)
		if err = c.flushLocked(); err != nil {
			n = 0
		}
	}
	if closing {
		c.Conn.Close()
	}
	return n, err
}

// flush sends what Write held back, unless another goroutine is writing
// (which sends it).
func (c *trackedConn) flush() {
	if c.wmu.TryLock() {
		_ = c.flushLocked()
		c.wmu.Unlock()
	}
}

// flushLocked writes what Write held back; wmu is held.
func (c *trackedConn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	if cap(c.wbuf) > maxWriteBuffer {
		c.wbuf = nil
	} else {
		c.wbuf = c.wbuf[:0]
	}
	return err
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

// Close sends what Write held back, closes the connection once and logs
// the session.
func (c *trackedConn) Close() error {
	c.wmu.Lock()
	_ = c.flushLocked()
	c.wmu.Unlock()
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
