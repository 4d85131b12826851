//go:build !unix

package relay

import "errors"

// rawSupported says that sockets are read and written through their own
// Read and Write here: every direction keeps a small buffer (kindSmall).
const rawSupported = false

func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func writeFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

func peekReadable(uintptr) bool { return true }
