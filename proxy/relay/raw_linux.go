//go:build linux

package relay

import (
	"syscall"
	"unsafe"
)

// rawSupported says that a socket can be read, written and peeked at
// through its syscall.RawConn here.
const rawSupported = true

// The system calls below are made raw (syscall.RawSyscall: no
// entersyscall and exitsyscall around them), which suits calls on a
// non-blocking socket, which return at once: a goroutine in a system call
// made the usual way lets the runtime's monitor thread (sysmon) wake up
// from its sleep when the process was idle, and take the goroutine's P
// away when the call lasts more than a tick (a write that wakes the
// upstream on a busy machine), which wakes another thread to run the P.
// Per relayed command, those were as many context switches again as the
// relay's own waits for the next bytes.

// readFD reads from a socket that its RawConn handed over.
func readFD(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if errno != syscall.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(n), nil
		}
	}
}

// writeFD writes to a socket that its RawConn handed over, and returns
// how much of p it took.
func writeFD(fd uintptr, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		if errno != syscall.EINTR {
			if errno != 0 {
				return 0, errno
			}
			return int(n), nil
		}
	}
}

// peekReadable is a RawConn.Read callback that returns true once the
// socket has a byte (or its end, or an error) to read, consuming nothing.
func peekReadable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EINTR {
			return errno != syscall.EAGAIN
		}
	}
}
