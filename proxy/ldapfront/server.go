package ldapfront

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
	"github.com/passgate/passgate/proxy/revoke"
)

// Upstream is the directory behind passgate (backends/ldapupstream wired by
// cmd/passgate).
type Upstream interface {
	// Open connects a new session for one client connection (relay mode).
	Open(ctx context.Context) (Session, error)
	// Verify checks a primary password with a bind of its own (bind-only
	// mode) and returns the directory's WhoAmI answer for it ("dn:…").
	// ok is false when the directory refused the credentials; err is set
	// when it could not be asked.
	Verify(ctx context.Context, dn string, password []byte) (authzID string, ok bool, err error)
	// Resolve looks dn up as passgate's service account (a base-scope
	// search for no attributes, aliases not followed) and returns the
	// entry's DN as the directory spells it. found is false when there is
	// no such entry; err is set when the directory could not be asked.
	Resolve(ctx context.Context, dn string) (entryDN string, found bool, err error)
	// HasServiceAccount reports whether a service account is configured;
	// without one, Resolve cannot work and bind names not in template
	// form are refused.
	HasServiceAccount() bool
}

// Session is one upstream connection carrying one client connection's
// operations. Its methods may be called from several goroutines.
type Session interface {
	// Bind binds the session as dn (anonymously when dn and password are
	// empty). ok is false when the directory refused the credentials.
	Bind(ctx context.Context, dn string, password []byte) (ok bool, err error)
	// BindService binds the session as passgate's service account.
	BindService(ctx context.Context) error
	// Send sends one request: op is its protocolOp element and controls its
	// [0] Controls element (nil for none), both raw BER. With proxyAuthz
	// set ("dn:…" or "u:…"), the proxied authorization control naming it is
	// added. fn gets every response's protocolOp and controls, valid only
	// until fn returns; last is true for the final one, and for a non-nil
	// err (the session was lost). fn runs on the session's reader and must
	// not block for long.
	Send(op, controls []byte, proxyAuthz string, fn func(op, controls []byte, last bool, err error)) (handle int64, err error)
	// OnIdle sets fn, which the session's reader calls whenever it has
	// handed every response it has read to its fn and is about to wait
	// for the directory, and when the session ends: the listener writes
	// the responses it held back then (conn.hold).
	OnIdle(fn func())
	// Err returns the error that ended the session, nil while it is alive.
	Err() error
	// Abandon abandons the request with this handle upstream; its fn is
	// not called again.
	Abandon(handle int64) error
	// Close unbinds and closes the session.
	Close() error
}

// Mode says what the listener does after a bind.
type Mode int

const (
	// ModeRelay relays operations to the directory after a bind.
	ModeRelay Mode = iota
	// ModeBindOnly answers Bind, WhoAmI and Unbind only.
	ModeBindOnly
)

// Defaults of Options.
const (
	DefaultMaxMessageBytes = 1 << 20
	DefaultMaxBindFailures = 5
	DefaultPreBindTimeout  = 60 * time.Second
	DefaultIdleTimeout     = 30 * time.Minute
	DefaultMaxInFlight     = 32
	// DefaultWriteTimeout bounds a write to a client that does not read:
	// a write has between WriteTimeout and twice WriteTimeout.
	DefaultWriteTimeout    = 30 * time.Second
	preBindMaxMessageBytes = 64 << 10 // largest message before a bind has succeeded
	maxQueuedBytes         = 4 << 20  // bytes of messages waiting for the executor, per connection
	// preBindQueuedBytes is maxQueuedBytes before a bind has succeeded:
	// a client must wait for a bind's answer before it sends more (RFC
	// 4511 §4.2.1), so that one that does not gets its messages read
	// only as the ones before are done, and cannot make passgate hold
	// megabytes for a connection that has proved nothing.
	preBindQueuedBytes = 64 << 10
	// At most maxHeldBytes of answers wait for the next write (conn.hold);
	// a buffer of held answers larger than keptHeldBytes is not kept
	// after the write.
	maxHeldBytes  = 16 << 10
	keptHeldBytes = 4 << 10
	// idleSlack bounds how much later than IdleTimeout an idle client is
	// closed, in exchange for moving the read deadline at most once per
	// idleSlack (deadline.extendRead).
	idleSlack        = time.Second
	handshakeTimeout = 15 * time.Second
	// noticeTimeout bounds the write of Shutdown's notice of
	// disconnection.
	noticeTimeout   = time.Second
	upstreamTimeout = 30 * time.Second // one upstream bind, WhoAmI or session set-up
	drainPoll       = 50 * time.Millisecond
	// upstreamFresh is how long a newly opened upstream session lets
	// other relay-mode binds go ahead without opening their own first
	// (see conn.reachable).
	upstreamFresh = time.Second
)

// Options configures a Server. Decider and Upstream are required.
type Options struct {
	// Conns learns when connections open and close (metrics); optional.
	Conns    observe.Conns
	Decider  lifecycle.Decider
	Upstream Upstream
	// Registry closes the connection of a client whose app password is
	// deleted. Optional.
	Registry *revoke.Registry
	// TLSConfig is the server certificate for StartTLS and, with
	// ImplicitTLS, for every connection. nil: StartTLS is answered
	// unavailable.
	TLSConfig *tls.Config
	// ImplicitTLS makes every connection start with a TLS handshake (LDAPS).
	ImplicitTLS bool
	Mode        Mode
	// UserDNTemplates such as "uid={user},ou=people,dc=example,dc=test".
	// The first one also turns a UPN or DOMAIN\user bind into the DN used
	// upstream.
	UserDNTemplates []string
	// UPNDomains lists the domains accepted in user@domain binds; empty:
	// any.
	UPNDomains []string
	// UPNAsUser gives the whole UPN (alice@example.test) to the decision
	// and to the templates instead of its local part (alice).
	UPNAsUser            bool
	AllowAnonymous       bool // accept anonymous binds and relay anonymous operations
	AllowUnauthenticated bool // accept a name without a password as an anonymous bind
	MaxMessageBytes      int  // per message; default 1 MiB; at most 64 KiB until a bind succeeds
	MaxBindFailures      int  // per connection, then it is closed; default 5
	PreBindTimeout       time.Duration
	IdleTimeout          time.Duration
	MaxInFlight          int // operations in flight per connection; default 32
	// WriteTimeout bounds a write to the client: a client that stops
	// reading is closed between WriteTimeout and twice WriteTimeout after
	// the write began, which frees its upstream session. Default 30 s.
	WriteTimeout time.Duration
	Listener     string
	Logger       *slog.Logger
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("ldapfront: server closed")

// Server is an LDAP listener. Create it with New.
type Server struct {
	opts  Options
	names *nameMapper
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	set    lifecycle.Set[*conn] // listeners and live connections
	nextID atomic.Uint64

	resolved resolveCache

	// upstreamSeen is when a new upstream session was last opened (Unix
	// nanoseconds). Answers on sessions already open do not count: a
	// directory may serve those while it refuses new connections.
	upstreamSeen atomic.Int64

	// readers lends the connections' readers their buffers: a plaintext
	// connection that waits for its client's next message holds none
	// (conn.awaitMessage). lent counts the buffers out of the pool: one
	// per connection that is reading a message, that reads over TLS, or
	// whose socket cannot be waited on apart from its reads (a PROXY
	// header that came in one segment with the first LDAP bytes).
	readers sync.Pool
	lent    atomic.Int64
	// executors counts the connections' executor goroutines: one per
	// connection that has a request queued or running, none for an idle
	// one (conn.startExecutor).
	executors atomic.Int64
	// executorEnding, set by tests before Serve, is called by an
	// executor that has found nothing left to run, before it lets go.
	executorEnding func(*conn)
}

// readBufferSize is the size of a connection's read buffer.
const readBufferSize = 4096

// reader takes a read buffer from the pool, reading from nc.
func (s *Server) reader(nc net.Conn) *bufio.Reader {
	s.lent.Add(1)
	br, ok := s.readers.Get().(*bufio.Reader)
	if !ok {
		return bufio.NewReaderSize(nc, readBufferSize)
	}
	br.Reset(nc)
	return br
}

// putReader gives a read buffer back to the pool; what it held is
// dropped.
func (s *Server) putReader(br *bufio.Reader) {
	s.lent.Add(-1)
	br.Reset(nil)
	s.readers.Put(br)
}

// Bounds of the resolve cache.
const (
	resolveCacheTTL = 5 * time.Second
	resolveCacheMax = 4096
)

// resolveCache remembers for resolveCacheTTL which entry a bind name
// outside the templates stands for, as the directory answered: an
// application that binds with its own account for every page it serves
// then costs the directory one lookup every few seconds instead of one
// per bind. Only found entries are kept. The directory still checks the
// password of every such bind; a rename within the TTL is decided on the
// old answer.
type resolveCache struct {
	mu sync.Mutex
	m  map[string]resolvedEntry
}

type resolvedEntry struct {
	dn    string
	until time.Time
}

func (r *resolveCache) get(name string, now time.Time) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[name]
	if !ok || now.After(e.until) {
		return "", false
	}
	return e.dn, true
}

func (r *resolveCache) put(name, dn string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil || len(r.m) >= resolveCacheMax {
		r.m = make(map[string]resolvedEntry) // full: start again
	}
	r.m[name] = resolvedEntry{dn: dn, until: now.Add(resolveCacheTTL)}
}

// sawUpstream notes that a new upstream session opened just now.
func (s *Server) sawUpstream() { s.upstreamSeen.Store(time.Now().UnixNano()) }

// upstreamRecentlySeen reports whether a new upstream session opened
// within upstreamFresh.
func (s *Server) upstreamRecentlySeen() bool {
	return time.Since(time.Unix(0, s.upstreamSeen.Load())) < upstreamFresh
}

// New checks opts and returns a Server. It fails when a template does not
// parse or a required option is missing.
func New(opts Options) (*Server, error) {
	if opts.Decider == nil || opts.Upstream == nil {
		return nil, errors.New("ldapfront: New needs a Decider and an Upstream")
	}
	if opts.ImplicitTLS && opts.TLSConfig == nil {
		return nil, errors.New("ldapfront: an LDAPS listener needs a certificate (tls.cert_file and tls.key_file)")
	}
	names, err := newNameMapper(opts.UserDNTemplates, opts.UPNDomains, opts.UPNAsUser)
	if err != nil {
		return nil, err
	}
	lifecycle.Default(&opts.MaxMessageBytes, DefaultMaxMessageBytes)
	lifecycle.Default(&opts.MaxBindFailures, DefaultMaxBindFailures)
	lifecycle.Default(&opts.PreBindTimeout, DefaultPreBindTimeout)
	lifecycle.Default(&opts.IdleTimeout, DefaultIdleTimeout)
	lifecycle.Default(&opts.MaxInFlight, DefaultMaxInFlight)
	lifecycle.Default(&opts.WriteTimeout, DefaultWriteTimeout)
	opts.Listener = lifecycle.ListenerName(opts.Listener, opts.ImplicitTLS, "ldap", "ldaps")
	log := lifecycle.Logger(opts.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts: opts, names: names, log: log, ctx: ctx, cancel: cancel,
	}, nil
}

// Serve accepts connections on ln until Shutdown or Close, and always
// returns a non-nil error: ErrServerClosed after Shutdown or Close. ln is
// closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	return lifecycle.Serve(&s.set, ln, lifecycle.Loop[*conn]{
		Name:   "ldapfront",
		Closed: ErrServerClosed,
		Conns:  s.opts.Conns,
		New:    s.newConn,
		Run:    (*conn).serve, // recovers its own panics (recoverConn)
		Retry: func(err error) {
			s.log.Warn("accept failed", slog.String("proto", policy.LDAP.String()), slog.Any("err", err))
		},
	})
}

// Shutdown stops accepting, closes each connection as soon as it has
// nothing in flight (with a notice of disconnection), and waits until all
// are gone or ctx ends; then it returns ctx's error and the caller should
// call Close.
func (s *Server) Shutdown(ctx context.Context) error {
	return lifecycle.Drain(ctx, &s.set, drainPoll, func(c *conn) {
		c.disconnectIfIdle(resultUnavailable, "passgate is shutting down")
	})
}

// Close closes the listeners and every connection at once and waits for
// their goroutines.
func (s *Server) Close() error {
	s.set.Stop()
	s.cancel()
	return lifecycle.Close(context.Background(), &s.set, func(c *conn) { c.stop(errors.New("server closed")) })
}

// recoverConn logs a panic of a connection goroutine with its stack.
func (s *Server) recoverConn(c *conn) {
	if r := recover(); r != nil {
		c.Event(s.ctx, s.log, slog.LevelError, "ldap connection panic", slog.Any("err", fmt.Errorf("ldapfront: panic: %v\n%s", r, debug.Stack())))
		c.stop(errors.New("panic"))
	}
}
