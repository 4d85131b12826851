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

// TestPeek: Peek tells nothing yet (EAGAIN), a byte waiting (1, and the
// byte is still there to read) and the peer's end (0, no error), without
// waiting.
func TestPeek(t *testing.T) {
	s, peer := socketPair(t, nil)
	rc, ok := RawConn(s)
	if !ok {
		t.Fatal("no RawConn")
	}
	peek := func() (n int, err error) {
		if cerr := rc.Control(func(fd uintptr) { n, err = Peek(fd) }); cerr != nil {
			t.Fatal(cerr)
		}
		return n, err
	}
	// until waits for what the peer did to arrive (later on a busy
	// machine), up to a generous deadline.
	until := func(wantN int, wantErr error) {
		t.Helper()
		n, err := peek()
		for deadline := time.Now().Add(time.Minute); (n != wantN || err != wantErr) && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			n, err = peek()
		}
		if n != wantN || err != wantErr {
			t.Fatalf("Peek = %d, %v; want %d, %v", n, err, wantN, wantErr)
		}
	}
	until(0, syscall.EAGAIN)
	if _, err := peer.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	until(1, nil)
	until(1, nil) // peeking again still finds it
	buf := make([]byte, 1)
	if _, err := io.ReadFull(s, buf); err != nil || buf[0] != 'y' {
		t.Fatalf("read after Peek: %q, %v", buf, err)
	}
	until(0, syscall.EAGAIN)
	peer.Close()
	until(0, nil)
}

// TestSocketCloseWrite: a Socket over a TCP connection half-closes it as
// the TCP connection would: the peer reads the end, and can still write
// to the Socket.
func TestSocketCloseWrite(t *testing.T) {
	s, peer := socketPair(t, nil)
	cw, ok := s.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", s)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := peer.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("peer read after CloseWrite: %d, %v; want the end", n, err)
	}
	if _, err := peer.Write([]byte("z")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(s, buf); err != nil || buf[0] != 'z' {
		t.Fatalf("read after CloseWrite: %q, %v; want the peer's byte", buf, err)
	}
}
