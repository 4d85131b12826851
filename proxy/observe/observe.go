// Package observe declares what passgate's listeners report about their
// client connections, for metrics: one small interface shared by the
// IMAP, SMTP and LDAP listeners, which cmd/passgate implements with
// Prometheus gauges and counters, and the one shape of the session log
// line that every listener writes when a connection ends. It imports no
// passgate package.
package observe

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Conns learns when a listener's client connections open and close.
// Implementations must be safe for concurrent use and must not block:
// they are called on the path of every connection.
type Conns interface {
	Opened()
	Closed()
}

// Opened calls c.Opened when c is not nil.
func Opened(c Conns) {
	if c != nil {
		c.Opened()
	}
}

// Closed calls c.Closed when c is not nil.
func Closed(c Conns) {
	if c != nil {
		c.Closed()
	}
}

// Bytes is what a Conns may also implement to learn the bytes relayed by
// each session when it ends: in from the client to the upstream, out the
// other way.
type Bytes interface {
	Relayed(in, out int64)
}

// Relayed tells c the bytes of an ended session when c implements Bytes.
func Relayed(c Conns, in, out int64) {
	if b, ok := c.(Bytes); ok {
		b.Relayed(in, out)
	}
}

// Outcomes of a session, as its log line names them.
const (
	OutcomeNoAuth  = "no_auth"     // no login was tried
	OutcomeFailed  = "auth_failed" // every login tried failed
	OutcomeRelayed = "relayed"     // a login succeeded and the session was relayed
)

// Session is the line every listener logs once when a client connection
// ends, with the same keys for every protocol: conn_id, proto, user,
// remote_addr, credential, outcome, bytes_in, bytes_out, ended and
// duration (a readable duration such as "1.234s"). User is the user a
// login tried, also when it failed; Credential the credential that
// matched ("app-password:12 (Outlook)", "primary"), also for a refused
// one; Ended what ended the connection ("client", "shutdown",
// "revoked"...).
type Session struct {
	ConnID     uint64
	Proto      string
	User       string
	RemoteAddr netip.AddrPort
	Credential string
	Outcome    string
	BytesIn    int64
	BytesOut   int64
	Ended      string
	Start      time.Time
}

// Event logs one event of the connection (a failed login, a lost
// upstream...) as msg at level, with the connection's keys first (conn_id,
// proto, remote_addr), then attrs. It reads only the fields set at accept.
func (s *Session) Event(ctx context.Context, log *slog.Logger, level slog.Level, msg string, attrs ...slog.Attr) {
	log.LogAttrs(ctx, level, msg, append([]slog.Attr{slog.Uint64("conn_id", s.ConnID), slog.String("proto", s.Proto),
		slog.String("remote_addr", s.RemoteAddr.String())}, attrs...)...)
}

// Log writes the session line as msg at level Info, with the listener's
// own attributes (tls, listener, upstream...) after the common keys, and
// tells c the bytes relayed.
func (s Session) Log(ctx context.Context, log *slog.Logger, c Conns, msg string, extra ...slog.Attr) {
	if s.Outcome == "" {
		s.Outcome = OutcomeNoAuth
	}
	attrs := append([]slog.Attr{
		slog.Uint64("conn_id", s.ConnID),
		slog.String("proto", s.Proto),
		slog.String("user", s.User),
		slog.String("remote_addr", s.RemoteAddr.String()),
		slog.String("credential", s.Credential),
		slog.String("outcome", s.Outcome),
		slog.Int64("bytes_in", s.BytesIn),
		slog.Int64("bytes_out", s.BytesOut),
		slog.String("ended", s.Ended),
		slog.String("duration", time.Since(s.Start).Round(time.Millisecond).String()),
	}, extra...)
	log.LogAttrs(ctx, slog.LevelInfo, msg, attrs...)
	Relayed(c, s.BytesIn, s.BytesOut)
}
