// Package smtpfront is passgate's SMTP submission listener: the first step
// on the path of an SMTP login.
//
// It accepts the client (STARTTLS or implicit TLS), reads AUTH PLAIN or
// AUTH LOGIN (Outlook's mechanism), asks the decision (lifecycle.Decider)
// whether the credential may log in with scope smtp, and logs in to the
// upstream submission server through the Upstream it declares
// (backends/smtpupstream, wired by cmd/passgate). After login it relays
// command by command, never raw bytes, so a client can never send its
// own XCLIENT to an upstream that trusts passgate, nor smuggle a second
// message past the end of its DATA. Every failed AUTH gets the same 535,
// and a decision or upstream that cannot answer a 454 (clients retry),
// both after the decision's uniform delay.
//
// The server side is passgate's own loop (server.go: commands and
// replies; reader.go: lines and their limit; data.go: DATA and BDAT),
// which replaced go-smtp's server: go-smtp read a message one ReadByte at
// a time, most of the CPU of a large submission, offered no way to read
// it otherwise, and ran BDAT in a goroutine of its own that the session
// had to race with. The loop answers every command as go-smtp v0.25.1
// did, byte for byte (testdata/wire.golden was written against it), and
// gives the upstream the same message for every input (the fuzz targets
// run go-smtp's own server in the test and compare what it hands its
// session).
//
// It imports policy for its Attempt and Login types, and proxy/lifecycle,
// observe and connlimit; no other front and no backend.
package smtpfront

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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
)

// LoginRequest is one upstream login.
type LoginRequest struct {
	User string
	// Password is the client's secret for primary-password logins only
	// (the upstream verifies it); empty for app-password logins.
	Password policy.Secret
	Helo     string // the client's EHLO name; "" when it is not printable ASCII of at most 255 bytes
}

// LogValue leaves the password out of logs, whatever the handler
// (policy.Secret has no JSON form of its own).
func (r LoginRequest) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", r.User), slog.Bool("password", r.Password != ""), slog.String("helo", r.Helo))
}

// Upstream connects to the submission server on a user's behalf.
type Upstream interface {
	// Dial connects to the submission server and checks that it answers
	// (greeting, EHLO, STARTTLS) for the real client. It is called before
	// the decision, so that an upstream that is down is found out the same
	// way whatever the client's secret. An error is a temporary failure
	// (the client gets 454).
	Dial(ctx context.Context, client netip.AddrPort) (PendingLogin, error)
}

// PendingLogin is an upstream connection that answered and is not logged
// in yet.
type PendingLogin interface {
	// Login logs in (once; on failure the connection is closed). An error
	// wrapping ErrLoginRefused means the upstream refused the credentials
	// (the client gets 535); any other error is a temporary failure (454).
	Login(ctx context.Context, req LoginRequest) (UpstreamSession, error)
	// Close closes a connection that is not going to be logged in.
	Close() error
}

// UpstreamSession is a logged-in upstream connection, as go-smtp's client
// offers it. Replies the upstream refused with are *smtp.SMTPError.
type UpstreamSession interface {
	Mail(from string, opts *smtp.MailOptions) error
	Rcpt(to string, opts *smtp.RcptOptions) error
	// Data streams the message from r, as it is read, and returns the
	// bytes sent and the upstream's reply. If r fails, the session must
	// abort the message (never commit a partial one) and is then unusable.
	Data(r io.Reader) (int64, error)
	Reset() error
	Quit() error
	// Close closes the connection at once. It may be called while another
	// goroutine is inside Data, to abort the message.
	Close() error
}

// ErrLoginRefused is what an Upstream wraps when the upstream refused the
// login's credentials.
var ErrLoginRefused = errors.New("smtpfront: the upstream refused the login")

// Sessions tracks sessions by the app password they logged in with, so
// that deleting it closes them (proxy/revoke.Registry implements it).
type Sessions interface {
	Track(ctx context.Context, id int64) (context.Context, func())
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("smtpfront: server closed")

// Defaults of Options.
const (
	DefaultMaxMessageBytes = 50 << 20
	DefaultMaxRecipients   = 100
	DefaultMaxLineLength   = 8192
	DefaultMaxCommands     = 50
	DefaultMaxAuthFailures = 5
	DefaultPreLoginTimeout = 60 * time.Second
	DefaultReadTimeout     = 5 * time.Minute
	DefaultWriteTimeout    = time.Minute
	DefaultHostname        = "passgate"
)

// preLoginSlack is the input a client may send before AUTH beyond its
// command lines: the TLS handshake and record overhead.
const preLoginSlack = 64 << 10

// Options configures a Server. Decider and Upstream are required.
type Options struct {
	// Conns learns when connections open and close (metrics); optional.
	Conns    observe.Conns
	Decider  lifecycle.Decider
	Upstream Upstream
	// TLSConfig is the server certificate; nil offers no STARTTLS.
	TLSConfig *tls.Config
	// ImplicitTLS makes Serve wrap every connection in TLS (port 465).
	ImplicitTLS bool
	// LegacyAuthLine also advertises "250-AUTH=PLAIN LOGIN" after
	// "250-AUTH PLAIN LOGIN" in EHLO, for clients older than Outlook
	// Express 5 (the pre-RFC 2554 syntax).
	LegacyAuthLine bool
	// Listener names the listener in logs ("smtp", "submissions").
	Listener string
	Hostname string // greeting name; default "passgate"
	// MaxMessageBytes is advertised as SIZE and enforced; default 50 MiB.
	// cmd sets it from the upstream's SIZE when the configuration does not.
	MaxMessageBytes int64
	MaxRecipients   int // per message; default 100
	// MaxLineLength bounds every line, commands and message lines alike
	// (default 8192).
	MaxLineLength int
	// MaxCommands bounds the commands before AUTH succeeds (default 50);
	// MaxAuthFailures the failed AUTHs per connection (default 5).
	MaxCommands, MaxAuthFailures int
	// PreLoginTimeout bounds the time from connect to a successful AUTH
	// (default 60s); ReadTimeout each command afterwards and each pause
	// inside DATA (default 5 min); WriteTimeout each reply (default 1 min).
	PreLoginTimeout, ReadTimeout, WriteTimeout time.Duration
	Logger                                     *slog.Logger // default: discard
	Sessions                                   Sessions     // optional
}

// Server is one SMTP submission listener.
type Server struct {
	o      Options // with the defaults filled in
	ctx    context.Context
	cancel context.CancelFunc
	nextID atomic.Uint64

	set lifecycle.Set[*trackedConn] // live connections; track refuses new ones once Shutdown or Close began

	lmu       sync.Mutex // guards listeners
	listeners map[net.Listener]struct{}

	// bufs holds the large read buffers of messages being read
	// (*[largeBuffer]byte), shared by the connections.
	bufs sync.Pool
}

// New returns a Server. It panics if Decider or Upstream is nil (a wiring
// bug).
func New(o Options) *Server {
	if o.Decider == nil || o.Upstream == nil {
		panic("smtpfront: New without a Decider or an Upstream")
	}
	lifecycle.Default(&o.MaxMessageBytes, DefaultMaxMessageBytes)
	lifecycle.Default(&o.MaxRecipients, DefaultMaxRecipients)
	lifecycle.Default(&o.MaxLineLength, DefaultMaxLineLength)
	lifecycle.Default(&o.MaxCommands, DefaultMaxCommands)
	lifecycle.Default(&o.MaxAuthFailures, DefaultMaxAuthFailures)
	lifecycle.Default(&o.PreLoginTimeout, DefaultPreLoginTimeout)
	lifecycle.Default(&o.ReadTimeout, DefaultReadTimeout)
	lifecycle.Default(&o.WriteTimeout, DefaultWriteTimeout)
	o.Hostname = cmp.Or(o.Hostname, DefaultHostname)
	o.Listener = lifecycle.ListenerName(o.Listener, o.ImplicitTLS, "smtp", "submissions")
	o.Logger = lifecycle.Logger(o.Logger)
	s := &Server{o: o, listeners: make(map[net.Listener]struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Serve accepts connections on ln until Shutdown or Close, and then
// returns ErrServerClosed; any other error is the listener's. Each
// connection runs on a goroutine of its own, which Shutdown and Close
// wait for. ln is closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	s.lmu.Lock()
	if s.set.Closing() {
		s.lmu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.lmu.Unlock()
	defer func() {
		s.lmu.Lock()
		delete(s.listeners, ln)
		s.lmu.Unlock()
		ln.Close()
	}()
	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.set.Closing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// A passing error: retry after a pause that doubles up to 1 s.
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				s.o.Logger.Warn("smtp accept failed, retrying", slog.String("listener", s.o.Listener), slog.Any("err", err))
				time.Sleep(pause)
				continue
			}
			return fmt.Errorf("smtpfront: accept on %s: %w", ln.Addr(), err)
		}
		pause = 0
		tc := s.track(nc)
		if tc == nil {
			nc.Close()
			return ErrServerClosed
		}
		go s.serveConn(tc)
	}
}

// closeListeners stops every Serve.
func (s *Server) closeListeners() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for ln := range s.listeners {
		ln.Close()
	}
}

// Shutdown stops accepting, answers every connection waiting for a
// command "421 4.3.2 Server shutting down" and closes it, and waits until
// every session has ended or ctx is done (then it returns ctx's error;
// call Close). A session inside a message, or waiting for the upstream,
// gets its reply first, and the 421 before its next command.
func (s *Server) Shutdown(ctx context.Context) error {
	s.lmu.Lock()
	s.set.Stop() // from now on track refuses connections
	s.lmu.Unlock()
	s.closeListeners()
	return lifecycle.Drain(ctx, &s.set, drainPoll, (*trackedConn).drain)
}

// drainPoll is how often Shutdown looks at the connections left.
const drainPoll = 50 * time.Millisecond

// Close closes the listeners and every session at once (the upstream
// connections with them, which aborts a message in flight) and waits up
// to 10 s for them to end.
func (s *Server) Close() error {
	s.lmu.Lock()
	s.set.Stop()
	s.lmu.Unlock()
	s.closeListeners()
	s.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return lifecycle.Close(ctx, &s.set, func(c *trackedConn) {
		c.Conn.Close()
		c.closeUpstream()
	})
}
