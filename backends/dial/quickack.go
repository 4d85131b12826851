package dial

import (
	"net"
	"syscall"
)

// QuickAck asks the kernel to acknowledge what conn (a TCP connection)
// receives at once rather than after the delayed-ACK timer (TCP_QUICKACK,
// Linux; elsewhere it does nothing and reports false). Call it after the
// last write of a request and before reading its reply.
//
// Why: after a TLS 1.3 handshake an OpenSSL server (Postfix) writes its
// session tickets, then, to the command that follows, its reply. Without
// TCP_NODELAY, Nagle's algorithm holds that reply until the tickets are
// acknowledged, and a client that has nothing more to send acknowledges
// them only when its delayed-ACK timer fires, 40 ms on Linux. TCP_QUICKACK
// takes the connection out of the interactive ("ping-pong") mode, in which
// the kernel defers ACKs hoping to send them with data, so that reading
// the tickets acknowledges them. The mode is not sticky: the kernel
// re-enters it when the connection sends again, hence a call before each
// read that matters.
func QuickAck(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	set := false
	_ = rc.Control(func(fd uintptr) { set = setQuickAck(fd) })
	return set
}
