// Package observe declares what passgate's listeners report about their
// client connections, for metrics: one small interface shared by the
// IMAP, SMTP and LDAP listeners, which cmd/passgate implements with
// Prometheus gauges and counters. It imports nothing.
package observe

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
