// Package sockwire reads, writes and peeks at a connection's socket
// through its syscall.RawConn, for the relays that wait on a socket
// themselves: the LDAP listener and upstream sessions (sockwire.Socket)
// and the IMAP relay (proxy/relay).
//
// On Linux the reads, writes and peeks are raw system calls
// (syscall.RawSyscall: no entersyscall and exitsyscall around them).
// That suits a non-blocking socket, whose calls return at once, and only
// such a socket (RawConn checks): a goroutine in a system call made the
// usual way wakes the runtime's monitor thread (sysmon) from its sleep
// when the process was idle, and lets it take the goroutine's P away
// when the call lasts over a tick, which wakes another thread to run it.
// When one request at a time is relayed, that was as many context
// switches again as the relay's own waits for the next bytes.
//
// Built with the race detector, they are syscall.Read and Write (and
// Recvfrom), whose hooks the detector needs: it draws a happens-before
// edge from a write of any file to a read, which tests rely on when they
// check a server's state after its answer. Other unix systems use them
// too; elsewhere Supported is false and RawConn hands out nothing.
//
// Like the framing packages (backends/*wire), it holds no state and
// imports no passgate package, so that a front and a backend may both
// import it.
package sockwire

import "syscall"

// RawConn returns c's syscall.RawConn when c hands out a socket that
// this package can read and write: the platform is supported and the
// socket is in non-blocking mode (the net package always sets it; a raw
// read of a blocking socket would hold a thread of the scheduler).
func RawConn(c any) (syscall.RawConn, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok || !Supported {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil || !nonBlocking(rc) {
		return nil, false
	}
	return rc, true
}
