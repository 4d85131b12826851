//go:build !unix

package ldapwire

import (
	"errors"
	"syscall"
)

// rawSocketIO says that NewSocket keeps a connection's own Read and
// Write here.
const rawSocketIO = false

func readSocket(uintptr, []byte) (int, error)  { return 0, errors.ErrUnsupported }
func writeSocket(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func nonBlocking(syscall.RawConn) bool { return false }
