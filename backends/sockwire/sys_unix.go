//go:build unix && (!linux || race)

package sockwire

import "syscall"

// Supported says that sockets are read and written here.
const Supported = true

// Read reads from a socket that its RawConn handed over.
func Read(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

// Write writes to a socket that its RawConn handed over, and returns how
// much of p it took.
func Write(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

// Readable is a RawConn.Read callback that returns true once the socket
// has a byte (or its end, or an error) to read, consuming nothing.
func Readable(fd uintptr) bool {
	_, err := Peek(fd)
	return err != syscall.EAGAIN
}

// Peek looks at a socket's next byte without consuming it or waiting: 1
// when a byte waits, 0 with a nil error at the socket's end, EAGAIN when
// there is nothing yet.
func Peek(fd uintptr) (int, error) {
	var b [1]byte
	for {
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

// nonBlocking: syscall.Read and Write tell the scheduler that they may
// block, so either mode is safe here.
func nonBlocking(syscall.RawConn) bool { return true }
