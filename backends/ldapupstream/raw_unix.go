//go:build unix

package ldapupstream

import "syscall"

// rawReads says that a socket is read through its syscall.RawConn here
// (idleConn).
const rawReads = true

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
