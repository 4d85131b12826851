package dial

import (
	"net"
	"runtime"
	"syscall"
	"testing"
)

// TestQuickAck: the option is set on a TCP connection (read back from
// the kernel on Linux) and nothing happens on a connection without a
// socket.
func TestQuickAck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	tcp, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if c := <-accepted; c != nil {
		defer c.Close()
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()

	linux := runtime.GOOS == "linux"
	tests := []struct {
		name string
		conn net.Conn
		want bool
	}{
		{"ok/tcp", tcp, linux},
		{"none/pipe", p1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := QuickAck(tc.conn); got != tc.want {
				t.Fatalf("QuickAck = %v, want %v", got, tc.want)
			}
			if !tc.want || !linux {
				return
			}
			rc, err := tc.conn.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var v int
			var gerr error
			if err := rc.Control(func(fd uintptr) {
				v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK)
			}); err != nil || gerr != nil {
				t.Fatalf("read TCP_QUICKACK back: %v %v", err, gerr)
			}
			if v != 1 {
				t.Fatalf("TCP_QUICKACK reads %d after QuickAck, want 1", v)
			}
		})
	}
}
