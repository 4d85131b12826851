//go:build !unix

package sockwire

import (
	"errors"
	"syscall"
)

// Supported says that sockets are not read and written here: RawConn
// hands out nothing, and the relays use a connection's own Read and
// Write.
const Supported = false

// Read is not supported here.
func Read(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// Write is not supported here.
func Write(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// Peek is not supported here.
func Peek(uintptr) (int, error) { return 0, errors.ErrUnsupported }

// Readable is not supported here; it says readable, so that a wait ends.
func Readable(uintptr) bool { return true }

func nonBlocking(syscall.RawConn) bool { return false }
