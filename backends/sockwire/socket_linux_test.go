//go:build linux && !race

package sockwire

import (
	"syscall"
	"testing"
)

// TestSocketNeedsNonBlocking: a socket in blocking mode is not read
// with raw system calls, which would then hold a thread of the
// scheduler.
func TestSocketNeedsNonBlocking(t *testing.T) {
	_, peer := socketPair(t, nil)
	rc, err := peer.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	setBlocking := func(blocking bool) {
		t.Helper()
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.SetNonblock(int(fd), !blocking) }); err != nil || serr != nil {
			t.Fatalf("set blocking %v: %v %v", blocking, err, serr)
		}
	}
	setBlocking(true)
	defer setBlocking(false)
	if s := NewSocket(peer, func() {}); s == peer {
		t.Fatal("NewSocket with a wait function returned the connection itself")
	} else if _, raw := s.(*Socket); raw {
		t.Fatal("NewSocket read a blocking socket with raw system calls")
	}
	setBlocking(false)
	if _, raw := NewSocket(peer, nil).(*Socket); !raw {
		t.Fatal("NewSocket did not read a non-blocking socket with raw system calls")
	}
}
