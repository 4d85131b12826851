package lifecycle

import (
	"cmp"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Pauses between retries of a passing accept error.
const (
	minPause = 5 * time.Millisecond
	maxPause = time.Second
)

// acceptConn returns the next connection of ln. A passing error (out of
// file descriptors or memory, a connection aborted before accept) must not
// drop the listener: it is reported to onRetry (which may be nil) and
// retried after a pause that doubles from 5 ms up to 1 s, unless stop
// reports that the server is closing. Any other error is returned as is;
// the caller decides whether it means "closed" or a failure.
func acceptConn(ln net.Listener, stop func() bool, onRetry func(error)) (net.Conn, error) {
	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err == nil || stop() || !retryable(err) {
			return nc, err
		}
		pause = min(max(2*pause, minPause), maxPause)
		if onRetry != nil {
			onRetry(err)
		}
		time.Sleep(pause)
	}
}

// retryable reports whether an accept error is passing.
func retryable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// ClientAddr returns the address of nc's peer, IPv4-mapped addresses
// unmapped; the zero value when it is not an IP address.
func ClientAddr(nc net.Conn) netip.AddrPort {
	var ap netip.AddrPort
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else if a := nc.RemoteAddr(); a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Logger returns log, or a logger that discards when log is nil.
func Logger(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// ListenerName returns name, or when it is empty the listener's default:
// plain, or implicit for an implicit-TLS listener ("ldap", "ldaps").
func ListenerName(name string, implicitTLS bool, plain, implicit string) string {
	if implicitTLS {
		plain = implicit
	}
	return cmp.Or(name, plain)
}

// Default sets an option left out (zero, or not positive) to def.
func Default[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
