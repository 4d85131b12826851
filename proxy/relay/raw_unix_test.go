//go:build unix

package relay

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// sysConn wraps a connection without changing its bytes and hands out its
// socket, as a listener's connection counted until login does.
type sysConn struct{ net.Conn }

func (c sysConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errNoSocket
	}
	return sc.SyscallConn()
}

// TestSourceKind checks how each kind of connection is waited on: a
// socket under a wrapper that hands it out is read through its RawConn
// like a bare one, also under Waitable.
func TestSourceKind(t *testing.T) {
	a, b := pipePair(t)
	defer a.Close()
	defer b.Close()
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	tests := []struct {
		name string
		conn net.Conn
		want sourceKind
	}{
		{"tcp", b, kindTCP},
		{"wrapped tcp", sysConn{b}, kindTCP},
		{"waitable tcp", Waitable(b), kindTCP},
		{"waitable wrapped tcp", Waitable(sysConn{b}), kindTCP},
		{"wrapped drained prefix", sysConn{&prefixConn{Conn: b}}, kindTCP},
		{"wrapped prefix with bytes", sysConn{&prefixConn{Conn: b, pending: []byte("x")}}, kindSmall},
		{"waitable wrapped pipe", Waitable(sysConn{p1}), kindSmall},
		{"pipe", p1, kindSmall},
		{"waitable pipe", Waitable(p1), kindSmall},
	}
	get := func() *[]byte { s := make([]byte, UpBufferSize); return &s }
	put := func(*[]byte) {}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := newSource(tc.conn, get, put).kind; got != tc.want {
				t.Errorf("kind = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestRunUrgentByte: an urgent (MSG_OOB) byte stops a read at its mark
// with bytes still queued; the relay reads on and the upstream gets the
// rest (the urgent byte itself is not inline and is not relayed, as
// with net.Conn's Read).
func TestRunUrgentByte(t *testing.T) {
	cl, relayClient := pipePair(t)
	upApp, relayUp := pipePair(t)
	defer cl.Close()
	defer upApp.Close()
	go Run(context.Background(), relayClient, relayUp, Options{})
	time.Sleep(20 * time.Millisecond) // let the relay park (not needed to pass)
	rc, err := cl.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	if err := rc.Control(func(fd uintptr) {
		if _, werr = syscall.Write(int(fd), []byte("a1 NOOP")); werr != nil {
			return
		}
		if werr = syscall.Sendto(int(fd), []byte("!"), syscall.MSG_OOB, nil); werr != nil {
			return
		}
		_, werr = syscall.Write(int(fd), []byte("\r\n"))
	}); err != nil || werr != nil {
		t.Fatal(err, werr)
	}
	const want = "a1 NOOP\r\n"
	upApp.SetReadDeadline(time.Now().Add(patience))
	got := make([]byte, 0, 64)
	buf := make([]byte, 64)
	for len(got) < len(want) {
		n, err := upApp.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("the upstream got %q, then %v; want %q", got, err, want)
		}
	}
	if string(got) != want {
		t.Fatalf("the upstream got %q, want %q", got, want)
	}
}
