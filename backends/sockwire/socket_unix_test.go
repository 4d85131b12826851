//go:build unix

package sockwire

import (
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestSocketIsRaw(t *testing.T) {
	s, _ := socketPair(t, nil)
	if _, ok := s.(*Socket); !ok {
		t.Fatalf("NewSocket returned %T, want *Socket", s)
	}
}

// TestSocketWaitCalledOnlyWhenEmpty checks that wait runs before a read
// waits, and not when data is there.
func TestSocketWaitCalledOnlyWhenEmpty(t *testing.T) {
	var waits atomic.Int64
	s, peer := socketPair(t, func() { waits.Add(1) })
	if _, err := peer.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	// Wait until the bytes are there to read, without reading them.
	buf := make([]byte, 3)
	if _, err := io.ReadFull(s, buf); err != nil {
		t.Fatal(err)
	}
	w := waits.Load()
	read := make(chan error, 1)
	go func() {
		_, err := s.Read(buf)
		read <- err
	}()
	for deadline := time.Now().Add(time.Minute); waits.Load() == w; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("wait not called while the read waits")
		}
	}
	if _, err := peer.Write([]byte("d")); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil || buf[0] != 'd' {
		t.Fatalf("read %q, %v; want d", buf[:1], err)
	}
}

// TestSocketHandsOutItsSocket: a Socket hands out the socket it reads
// (syscall.Conn), so that a relay may take it over from a Socket as from
// a *net.TCPConn; a Socket over a Socket is one more Socket over the same.
func TestSocketHandsOutItsSocket(t *testing.T) {
	s, peer := socketPair(t, nil)
	rc, ok := RawConn(s)
	if !ok {
		t.Fatalf("RawConn of a %T: none", s)
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil {
		t.Fatal(err)
	}
	var want uintptr
	under, err := s.(*Socket).Conn.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := under.Control(func(f uintptr) { want = f }); err != nil {
		t.Fatal(err)
	}
	if fd != want {
		t.Fatalf("Socket hands out fd %d, its connection's is %d", fd, want)
	}
	// Bytes written through the socket it hands out arrive, as they
	// would through the Socket.
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	again := NewSocket(s, nil)
	buf := make([]byte, 1)
	if _, err := io.ReadFull(again, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read through a Socket over a Socket: %q, %v", buf, err)
	}
}
