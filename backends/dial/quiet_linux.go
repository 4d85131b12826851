package dial

import (
	"net"
	"syscall"

	"github.com/passgate/passgate/backends/sockwire"
)

// Quiet reports whether the TCP connection conn has nothing to read and
// is not closed by the peer: a connection kept ready (Ready) must be
// silent until it is used, and one that the server closed or spoke on
// unasked (a timeout's farewell) is not handed out. It peeks without
// blocking and consumes nothing; it reports true when it cannot tell.
func Quiet(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	silent := true
	rerr := rc.Read(func(fd uintptr) bool {
		// A raw system call (sockwire.Peek): a login that takes a ready
		// connection does not wake the runtime's monitor thread here.
		_, err := sockwire.Peek(fd)
		// A byte waiting, or the end (no error): not silent; EAGAIN:
		// silent and open; any other error: broken.
		silent = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true // never wait for readability
	})
	return silent && rerr == nil
}
