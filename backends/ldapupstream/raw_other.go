//go:build !unix

package ldapupstream

import "errors"

// rawReads says that sockets are read with their own Read here: idleConn
// calls its idle function before every read.
const rawReads = false

func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
