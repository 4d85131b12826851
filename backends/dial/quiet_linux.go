package dial

import (
	"net"
	"syscall"
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
	var b [1]byte
	rerr := rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// n > 0: bytes waiting; n == 0 without error: closed by the peer;
		// EAGAIN: silent and open; any other error: broken.
		silent = n < 0 && (err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR)
		return true // never wait for readability
	})
	return silent && rerr == nil
}
