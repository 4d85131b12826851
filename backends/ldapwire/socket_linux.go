//go:build linux && !race

package ldapwire

import (
	"syscall"
	"unsafe"
)

// rawSocketIO says that a Socket reads and writes through its
// syscall.RawConn here.
const rawSocketIO = true

// readSocket reads from a non-blocking socket with a raw read(2), which
// returns at once (EAGAIN when there is nothing to read).
func readSocket(fd uintptr, p []byte) (int, error) {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, errno
	}
}

// writeSocket writes to a non-blocking socket with a raw write(2),
// which returns at once (EAGAIN when the socket's buffer is full).
func writeSocket(fd uintptr, p []byte) (int, error) {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, errno
	}
}

// nonBlocking reports whether rc's socket is in non-blocking mode, as
// the raw reads and writes need.
func nonBlocking(rc syscall.RawConn) bool {
	var flags uintptr
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		flags, _, errno = syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	}); err != nil || errno != 0 {
		return false
	}
	return flags&syscall.O_NONBLOCK != 0
}
