//go:build unix && !linux

package relay

import "syscall"

// rawSupported says that a socket can be read and peeked at through its
// syscall.RawConn here.
const rawSupported = true

// readFD reads from a socket that its RawConn handed over.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			if n < 0 {
				n = 0
			}
			return n, err
		}
	}
}

// writeFD writes to a socket that its RawConn handed over, and returns
// how much of p it took.
func writeFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			if n < 0 {
				n = 0
			}
			return n, err
		}
	}
}

// peekReadable is a RawConn.Read callback that returns true once the
// socket has a byte (or its end, or an error) to read, consuming nothing.
func peekReadable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return err != syscall.EAGAIN
		}
	}
}
