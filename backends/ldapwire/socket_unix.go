//go:build unix && (!linux || race)

package ldapwire

import "syscall"

// rawSocketIO says that a Socket reads and writes through its
// syscall.RawConn here, with syscall.Read and Write: with the runtime's
// system-call hooks, and, under the race detector, with the
// happens-before edge it draws from a write to a read of any file
// (which raw system calls would lose, and with it the synchronisation
// that tests rely on when they check a server's state after its
// answer).
const rawSocketIO = true

// readSocket reads from a non-blocking socket.
func readSocket(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

// writeSocket writes to a non-blocking socket.
func writeSocket(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

// nonBlocking reports whether rc's socket is in non-blocking mode:
// syscall.Read and Write tell the scheduler that they may block, so
// either way is safe here.
func nonBlocking(syscall.RawConn) bool { return true }
