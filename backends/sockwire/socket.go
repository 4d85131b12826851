package sockwire

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Socket is a TCP connection whose Read and Write go through its
// syscall.RawConn: the runtime's poller waits for the socket as it does
// for net.Conn, and a read or write that would wait is seen as EAGAIN
// (the moment Socket calls its wait function).
//
// On Linux the reads and writes themselves are raw system calls
// (see the package comment), which skip the runtime's system-call hooks: the
// socket is non-blocking, so they never block, and the hooks' only
// effect here would be to wake the runtime's monitor thread (sysmon)
// from its sleep each time a process with nothing running enters a
// system call — when LDAP operations come one at a time, twice per
// operation, a futex wake-up and a context switch each, a measurable
// share of what relaying a small search costs.
//
// Read and Write are each safe for concurrent use, as net.Conn's are;
// the other methods are the connection's own.
type Socket struct {
	net.Conn
	rc   syscall.RawConn
	wait func() // called when a read would wait; nil for none

	rmu    sync.Mutex // one Read at a time; guards rp, rn, rerr
	rp     []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool // bound once: a read allocates no closure

	wmu     sync.Mutex // one Write at a time; guards wp, wn, werr
	wp      []byte
	wn      int
	werr    error
	writeFn func(fd uintptr) bool
}

// NewSocket returns nc read and written as a Socket. wait (nil for
// none) is called each time a read finds nothing to read yet, just
// before it waits for the socket: on the reading goroutine, and it must
// not block for long. When nc has no syscall.RawConn (not a socket, or a
// platform without raw reads), or its socket is not in non-blocking mode
// (the net package always sets it; a raw read of a blocking socket
// would hold a thread of the scheduler), the result reads with nc's own
// Read and calls wait before every read instead, which holds nothing
// back; with wait nil it is nc itself.
func NewSocket(nc net.Conn, wait func()) net.Conn {
	if rc, ok := RawConn(nc); ok {
		s := &Socket{Conn: nc, rc: rc, wait: wait}
		s.readFn, s.writeFn = s.readRaw, s.writeRaw
		return s
	}
	if wait == nil {
		return nc
	}
	return &waitingConn{Conn: nc, wait: wait}
}

// Read reads from the socket; its errors are those of net.Conn.Read
// (net.ErrClosed, os.ErrDeadlineExceeded, io.EOF, a *net.OpError).
func (s *Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rp, s.rn, s.rerr = p, 0, nil
	err := s.rc.Read(s.readFn)
	n, rerr := s.rn, s.rerr
	s.rp, s.rerr = nil, nil
	switch {
	case err != nil: // closed (net.ErrClosed), or the read deadline
		return 0, err
	case rerr != nil:
		return 0, s.opError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readRaw is Read's syscall.RawConn callback: it reads, and on EAGAIN
// calls wait and asks to be called again once the socket is readable.
func (s *Socket) readRaw(fd uintptr) bool {
	s.rn, s.rerr = Read(fd, s.rp)
	if s.rerr == syscall.EAGAIN {
		if s.wait != nil {
			s.wait()
		}
		return false
	}
	return true
}

// Write writes all of p, waiting for the socket as often as it is full;
// its errors are those of net.Conn.Write (a write deadline,
// net.ErrClosed, a *net.OpError).
func (s *Socket) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wp, s.wn, s.werr = p, 0, nil
	err := s.rc.Write(s.writeFn)
	n, werr := s.wn, s.werr
	s.wp, s.werr = nil, nil
	switch {
	case err != nil:
		return n, err
	case werr != nil:
		return n, s.opError("write", werr)
	}
	return n, nil
}

// writeRaw is Write's syscall.RawConn callback: it writes what is left,
// and on EAGAIN asks to be called again once the socket is writable.
func (s *Socket) writeRaw(fd uintptr) bool {
	for len(s.wp) > 0 {
		n, err := Write(fd, s.wp)
		switch {
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			s.werr = err
			return true
		case n == 0:
			s.werr = io.ErrUnexpectedEOF
			return true
		}
		s.wn += n
		s.wp = s.wp[n:]
	}
	return true
}

// NetConn returns the connection that NewSocket wrapped (as
// tls.Conn.NetConn does), so that what a listener's wrapper knows about
// it (proxy/connlimit's LoggedIn) can still be reached.
func (s *Socket) NetConn() net.Conn { return s.Conn }

// CloseWrite half-closes the connection when the one NewSocket wrapped
// can (a *net.TCPConn): a Socket stands where a TCP connection stood, and
// a caller that ends its side of the conversation keeps the other open.
// Over a connection that cannot, it closes the whole connection.
func (s *Socket) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.Conn.Close()
}

// SyscallConn hands out the socket, as the connection that NewSocket
// wrapped did: Socket reads nothing ahead and keeps no byte back, so a
// relay that reads or writes the socket itself (proxy/relay) may take it
// over from a Socket as from a *net.TCPConn.
func (s *Socket) SyscallConn() (syscall.RawConn, error) { return s.rc, nil }

func (s *Socket) opError(op string, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}

// waitingConn is NewSocket's connection without a RawConn: it calls wait
// before every read.
type waitingConn struct {
	net.Conn
	wait func()
}

// NetConn returns the connection that NewSocket wrapped.
func (c *waitingConn) NetConn() net.Conn { return c.Conn }

func (c *waitingConn) Read(p []byte) (int, error) {
	c.wait()
	return c.Conn.Read(p)
}
