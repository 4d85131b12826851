package connlimit

import (
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
)

func TestLimiter(t *testing.T) {
	p := func(s string) netip.Prefix { return source(netip.MustParseAddr(s)) }
	tests := []struct {
		name  string
		lim   Limits
		from  []string
		wants []string // "" or the reason, per connection
	}{
		{"per-address", Limits{PerAddress: 2}, []string{"192.0.2.1", "192.0.2.1", "192.0.2.1", "192.0.2.2"}, []string{"", "", ReasonAddress, ""}},
		{"ipv6-per-64", Limits{PerAddress: 2}, []string{"2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:0:1::1"}, []string{"", "", ReasonAddress, ""}},
		{"mapped-is-ipv4", Limits{PerAddress: 1}, []string{"192.0.2.1", "::ffff:192.0.2.1"}, []string{"", ReasonAddress}},
		{"total", Limits{PerAddress: 5, Total: 3}, []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"}, []string{"", "", "", ReasonTotal}},
		{"none", Limits{}, []string{"192.0.2.1", "192.0.2.1", "192.0.2.1"}, []string{"", "", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := New(tc.lim)
			for i, a := range tc.from {
				if got := l.acquire(p(a)); got != tc.wants[i] {
					t.Fatalf("connection %d from %s: %q, want %q", i, a, got, tc.wants[i])
				}
			}
		})
	}
}

// TestListen: over a cap, the refusal is written and the connection
// closed; a closed or logged-in connection frees its place.
func TestListen(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reasons []string
	lim := New(Limits{PerAddress: 2})
	ln := Listen(inner, lim, Options{Refusal: []byte("* BYE busy\r\n"), OnRefused: func(r string) {
		mu.Lock()
		reasons = append(reasons, r)
		mu.Unlock()
	}})
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	s1, s2 := <-accepted, <-accepted
	// A relay may read an accepted connection's socket itself.
	if sc, ok := s1.(syscall.Conn); !ok {
		t.Errorf("%T hands out no socket", s1)
	} else if _, err := sc.SyscallConn(); err != nil {
		t.Errorf("SyscallConn: %v", err)
	}
	over := dial()
	if b, _ := io.ReadAll(over); string(b) != "* BYE busy\r\n" {
		t.Fatalf("over the cap: read %q", b)
	}
	if lim.PreLogin() != 2 || len(reasons) != 1 || reasons[0] != ReasonAddress {
		t.Fatalf("counted %d, refusals %q", lim.PreLogin(), reasons)
	}
	s1.Close()
	LoggedIn(tls.Server(s2, &tls.Config{})) // through a TLS layer
	LoggedIn(s2)                            // twice: nothing more
	if n := lim.PreLogin(); n != 0 {
		t.Fatalf("after a close and a login: %d counted, want 0", n)
	}
	dial()
	dial()
	<-accepted
	<-accepted
	if n := lim.PreLogin(); n != 2 {
		t.Fatalf("new connections: %d counted, want 2", n)
	}
	s2.Close() // logged in already: frees nothing more
	if n := lim.PreLogin(); n != 2 {
		t.Fatalf("closing a logged-in session: %d counted, want 2", n)
	}
}

// TestSyscallConn: an accepted connection offers the socket's
// syscall.RawConn, for a front that reads and writes the socket itself.
func TestSyscallConn(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := Listen(inner, New(Limits{PerAddress: 2}), Options{})
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp", inner.Addr().String()); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatalf("%T has no SyscallConn", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	if err := rc.Control(func(f uintptr) { fd = f }); err != nil || fd == 0 {
		t.Fatalf("Control: fd %d, %v", fd, err)
	}
}
