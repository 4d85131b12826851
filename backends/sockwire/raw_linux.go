//go:build linux && !race

package sockwire

import (
	"syscall"
	"unsafe"
)

// Supported says that sockets are read and written here.
const Supported = true

// Read reads from a non-blocking socket that its RawConn handed over,
// with a raw read(2), which returns at once (EAGAIN when there is
// nothing to read, 0 at its end).
func Read(fd uintptr, p []byte) (int, error) { return rawIO(syscall.SYS_READ, fd, p, 0) }

// Write writes to a non-blocking socket that its RawConn handed over,
// with a raw write(2), and returns how much of p it took (EAGAIN when
// the socket's buffer is full).
func Write(fd uintptr, p []byte) (int, error) { return rawIO(syscall.SYS_WRITE, fd, p, 0) }

// rawIO makes the read(2), write(2) or recvfrom(2) trap on fd with p
// (and flags, recvfrom's; 0 for the others, which take no fourth
// argument), again when a signal interrupted it.
func rawIO(trap, fd uintptr, p []byte, flags uintptr) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, _, errno := syscall.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), flags, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, errno
	}
}

// Readable is a RawConn.Read callback that returns true once the socket
// has a byte (or its end, or an error) to read, consuming nothing.
func Readable(fd uintptr) bool {
	_, err := Peek(fd)
	return err != syscall.EAGAIN
}

// nonBlocking reports whether rc's socket is in non-blocking mode.
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

// Peek looks at a non-blocking socket's next byte without consuming it
// or waiting, with a raw recvfrom(2): 1 when a byte waits, 0 with a nil
// error at the socket's end, EAGAIN when there is nothing yet.
func Peek(fd uintptr) (int, error) {
	var b [1]byte
	return rawIO(syscall.SYS_RECVFROM, fd, b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
}
