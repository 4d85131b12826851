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
