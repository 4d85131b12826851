// Package imapfront is passgate's IMAP listener: the first stop of an IMAP
// login.
//
// A client connects here, gets a greeting, may ask for CAPABILITY, ID or
// STARTTLS, and sends LOGIN or AUTHENTICATE (PLAIN, LOGIN). imapfront
// reads the user name and secret with its own bounded pre-login reader,
// asks the decision (lifecycle.Decider), logs in through an Upstream
// (implemented in cmd over backends/imapupstream), and hands both
// connections to proxy/relay, which copies the bytes after login. Every
// failed login gets the same reply after the same delay, whatever the
// reason; secrets are never logged.
//
// It imports policy (for the Attempt and Login types), proxy/relay and the
// shared front pieces (lifecycle, revoke, observe, connlimit), and no
// other protocol package; backends are reached only through the
// interfaces declared here.
package imapfront

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
	"github.com/passgate/passgate/proxy/relay"
	"github.com/passgate/passgate/proxy/revoke"
)

// IDField is one field of the client's IMAP ID (RFC 2971), e.g. name or
// version.
type IDField struct {
	Name  string
	Value string
}

// LoginRequest is what the Upstream needs to log in on the user's behalf.
type LoginRequest struct {
	User     string         // user name to log in upstream with
	Password policy.Secret  // the client's password for a primary-password login; empty for an app password (master login)
	Primary  bool           // true: passthrough with Password; false: master login for User
	Client   netip.AddrPort // the client's address, to forward where the upstream accepts it
	ClientID []IDField      // the client's own ID fields (standard RFC 2971 names only)
}

// Upstream logs in to the upstream IMAP server.
type Upstream interface {
	// Login logs in and returns the connection positioned right after the
	// upstream's tagged OK line (bytes the upstream sent after it must be
	// readable from the returned conn) and the text of that line after its
	// tag, e.g. "OK [CAPABILITY IMAP4rev1 ...] Logged in". A refusal of
	// the credentials must wrap ErrUpstreamRefused; any other error is
	// taken as the upstream being unavailable.
	Login(ctx context.Context, req LoginRequest) (net.Conn, string, error)
}

// ErrUpstreamRefused is wrapped by an Upstream when the upstream refused
// the login (as opposed to being unreachable). The client then gets the
// uniform authentication failure, never the upstream's text.
var ErrUpstreamRefused = errors.New("imapfront: upstream refused the login")

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("imapfront: server closed")

// Defaults for the pre-login bounds.
const (
	DefaultMaxLineLength   = 8192
	DefaultMaxLiteral      = 8192
	DefaultMaxCommands     = 50
	DefaultPreLoginTimeout = 60 * time.Second
	DefaultMaxAuthFailures = 5
)

// Named deadlines of the connection states.
const (
	handshakeTimeout = 15 * time.Second      // TLS handshake (implicit TLS and STARTTLS)
	loginTimeout     = 30 * time.Second      // decision plus upstream login
	byeTimeout       = 2 * time.Second       // writing a last "* BYE" to a closing connection
	drainPoll        = 50 * time.Millisecond // Shutdown's look at the connections left
)

// Options configures a Server. Decider and Upstream are required.
type Options struct {
	// Conns learns when connections open and close (metrics); optional.
	Conns       observe.Conns
	Decider     lifecycle.Decider
	Upstream    Upstream
	Relays      *revoke.Registry // live sessions by app password; default: a private registry
	TLSConfig   *tls.Config      // for STARTTLS, or for every connection with ImplicitTLS; nil: no TLS
	ImplicitTLS bool             // handshake TLS right after accept (port 993)
	Logger      *slog.Logger     // default: discard

	MaxLineLength   int           // bytes per command line before login; default 8192
	MaxLiteral      int           // bytes per literal before login; default 8192
	MaxCommands     int           // commands before login; default 50
	MaxAuthFailures int           // failed logins per connection; default 5
	PreLoginTimeout time.Duration // from accept to login; default 60s
	// ParkAfter is how long a relayed session's side may be silent
	// before its relay lets go of the goroutine that waits for it
	// (relay.Parker); default relay.DefaultParkAfter.
	ParkAfter time.Duration
}

// Server is an IMAP listener. Create it with New.
type Server struct {
	opts Options // with the defaults filled in

	baseCtx    context.Context // parent of every connection's context
	cancelBase context.CancelFunc

	set     lifecycle.Set[*conn] // listeners and live connections
	nextID  atomic.Uint64        // the last conn_id given
	buffers *relay.Buffers       // the relays' copy buffers, lent while bytes flow
	parker  *relay.Parker        // holds idle relays without goroutines; nil where there is none
}

// New returns a Server. It panics when Decider or Upstream is nil, or when
// ImplicitTLS is set without a TLSConfig: these are wiring bugs.
func New(opts Options) *Server {
	if opts.Decider == nil || opts.Upstream == nil {
		panic("imapfront: New without a Decider or an Upstream")
	}
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		panic("imapfront: New with ImplicitTLS but no TLSConfig")
	}
	if opts.Relays == nil {
		opts.Relays = revoke.NewRegistry()
	}
	opts.Logger = lifecycle.Logger(opts.Logger)
	lifecycle.Default(&opts.MaxLineLength, DefaultMaxLineLength)
	lifecycle.Default(&opts.MaxLiteral, DefaultMaxLiteral)
	lifecycle.Default(&opts.MaxCommands, DefaultMaxCommands)
	lifecycle.Default(&opts.MaxAuthFailures, DefaultMaxAuthFailures)
	lifecycle.Default(&opts.PreLoginTimeout, DefaultPreLoginTimeout)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{opts: opts, baseCtx: ctx, cancelBase: cancel, buffers: relay.NewBuffers()}
	pk, err := relay.NewParker(opts.ParkAfter)
	switch {
	case err == nil:
		s.parker = pk
	case !errors.Is(err, relay.ErrNoParking):
		opts.Logger.LogAttrs(ctx, slog.LevelWarn, "idle sessions keep their goroutines: no poller for parking them",
			slog.String("proto", policy.IMAP.String()), slog.Any("err", err))
	}
	return s
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Shutdown or Close; it then returns ErrServerClosed. Any other
// accept error is returned wrapped; ln is closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	return lifecycle.Serve(&s.set, ln, lifecycle.Loop[*conn]{
		Name:   "imapfront",
		Closed: ErrServerClosed,
		Conns:  s.opts.Conns,
		New:    func(nc net.Conn) *conn { return newConn(s, nc) },
		Hand:   (*conn).serve,
		// One bad connection never takes the server down.
		Panicked: func(c *conn, r any, stack []byte) {
			c.Event(s.baseCtx, s.opts.Logger, slog.LevelError, "connection panic", slog.Any("err", r), slog.String("stack", string(stack)))
			c.closeAll()
		},
		Retry: func(err error) {
			s.opts.Logger.LogAttrs(s.baseCtx, slog.LevelWarn, "accept failed",
				slog.String("proto", policy.IMAP.String()), slog.Any("err", err))
		},
	})
}

// Shutdown stops accepting, says "* BYE Server shutting down" to every
// connection that has not logged in yet and closes it, then waits for the
// relayed sessions to end by themselves. When ctx ends first, it closes
// the remaining sessions, waits for their goroutines and returns ctx's
// error. It returns nil when every session ended in time.
func (s *Server) Shutdown(ctx context.Context) error {
	err := lifecycle.Drain(ctx, &s.set, drainPoll, (*conn).shutdown)
	s.cancelBase()
	if err == nil {
		s.closeParker()
		return nil
	}
	_ = lifecycle.Close(context.Background(), &s.set, (*conn).closeAll)
	s.closeParker()
	return fmt.Errorf("imapfront: shutdown: sessions closed before they ended: %w", err)
}

// Close stops accepting, closes every connection (a relayed session after
// its "* BYE", which may take up to 2 s for a client that does not read)
// and waits for their goroutines to return.
func (s *Server) Close() error {
	s.set.Stop()
	s.cancelBase()
	err := lifecycle.Close(context.Background(), &s.set, (*conn).closeAll)
	s.closeParker()
	return err
}

// closeParker stops the parking of idle relays, once none is left.
func (s *Server) closeParker() {
	if s.parker != nil {
		_ = s.parker.Close()
	}
}

// ParkFailures returns how many times a relayed session's side could
// not park (the system's limit of epoll watches, or memory); each such
// side keeps its goroutine.
func (s *Server) ParkFailures() int64 {
	if s.parker == nil {
		return 0
	}
	return s.parker.Failures()
}

// Parked returns how many directions of relayed sessions are parked: two
// for each session whose client and upstream are both idle.
func (s *Server) Parked() int64 {
	if s.parker == nil {
		return 0
	}
	return s.parker.Parked()
}
