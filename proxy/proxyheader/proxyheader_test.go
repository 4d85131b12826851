package proxyheader

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// dialFrom connects to ln from local address ip.
func dialFrom(t *testing.T, ln net.Listener, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: patience, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func header(t *testing.T, version byte, cmd proxyproto.ProtocolVersionAndCommand) []byte {
	t.Helper()
	h := &proxyproto.Header{
		Version: version, Command: cmd, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 51234},
		DestinationAddr: &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 993},
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func listen(t *testing.T, from string, timeout time.Duration, onRefused ...func()) net.Listener {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{From: []netip.Prefix{netip.MustParsePrefix(from)}, Timeout: timeout}
	if len(onRefused) > 0 {
		o.OnRefused = onRefused[0]
	}
	ln := Listen(raw, o)
	t.Cleanup(func() { ln.Close() })
	return ln
}

func accept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Accept: %v", r.err)
		}
		t.Cleanup(func() { r.c.Close() })
		return r.c
	case <-time.After(patience):
		t.Fatalf("Accept returned nothing in %v", patience)
	}
	return nil
}

func TestListen(t *testing.T) {
	tests := []struct {
		name       string
		peer       string // the client's own address
		send       []byte // what the client sends first
		wantRemote string // RemoteAddr's host:port, "" for the peer's own
		wantData   string // what the listener then reads
	}{
		{"v1", "127.0.0.2", append(header(t, 1, proxyproto.PROXY), "a LOGIN x y\r\n"...), "203.0.113.7:51234", "a LOGIN x y\r\n"},
		{"v2", "127.0.0.2", append(header(t, 2, proxyproto.PROXY), "\x16\x03\x01"...), "203.0.113.7:51234", "\x16\x03\x01"},
		{"v2-local-names-no-client", "127.0.0.2", append(header(t, 2, proxyproto.LOCAL), "x"...), "0.0.0.0:0", "x"},
		{"v1-unknown-names-no-client", "127.0.0.2", []byte("PROXY UNKNOWN\r\nx"), "0.0.0.0:0", "x"},
		{"not-a-proxy-peer-header-is-data", "127.0.0.3", []byte("PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n"), "", "PROXY TCP4 198.51.100.1 192.0.2.1 1 2\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, "127.0.0.2/32", patience)
			c := dialFrom(t, ln, tc.peer)
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			s := accept(t, ln)
			want := tc.wantRemote
			if want == "" {
				want = c.LocalAddr().String()
			}
			if got := s.RemoteAddr().String(); got != want {
				t.Errorf("RemoteAddr = %s, want %s", got, want)
			}
			buf := make([]byte, len(tc.wantData))
			s.SetReadDeadline(time.Now().Add(patience))
			if _, err := io.ReadFull(s, buf); err != nil || string(buf) != tc.wantData {
				t.Errorf("read %q, %v; want %q", buf, err, tc.wantData)
			}
			// All read: a relay may read the socket itself.
			if sc, ok := s.(syscall.Conn); !ok {
				t.Errorf("%T hands out no socket", s)
			} else if _, err := sc.SyscallConn(); err != nil {
				t.Errorf("SyscallConn: %v", err)
			}
		})
	}
}

// TestMissingHeaderClosesOnlyThatConnection: a proxy peer that sends no
// header (or garbage) is closed after the timeout or at once, while a
// good connection opened meanwhile is accepted without waiting for it:
// with a header timeout far longer than the test, the good connection
// is accepted while the silent peer still waits (a listener that read
// the headers one after the other would hold it until the timeout).
// Then, on a listener with a short timeout, a silent peer is closed once
// its timeout has passed.
func TestMissingHeaderClosesOnlyThatConnection(t *testing.T) {
	var refused atomic.Int32
	ln := listen(t, "127.0.0.2/32", 10*patience, func() { refused.Add(1) })
	quiet := dialFrom(t, ln, "127.0.0.2")
	quiet.Close()                // a TCP health check: not a refusal
	dialFrom(t, ln, "127.0.0.2") // a silent peer: sends nothing
	garbage := dialFrom(t, ln, "127.0.0.2")
	garbage.Write([]byte("a LOGIN alice secret\r\n"))
	good := dialFrom(t, ln, "127.0.0.2")
	good.Write(header(t, 1, proxyproto.PROXY))
	s := accept(t, ln)
	if got := s.RemoteAddr().String(); got != "203.0.113.7:51234" {
		t.Fatalf("accepted %s, want the good connection", got)
	}
	garbage.SetReadDeadline(time.Now().Add(patience))
	if n, err := garbage.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("garbage peer: read %d, %v; want the connection closed", n, err)
	}
	if n := refused.Load(); n != 1 {
		t.Errorf("OnRefused called %d times once the garbage peer was closed, want 1 (the silent peer still waits)", n)
	}

	var timedOut atomic.Int32
	short := listen(t, "127.0.0.2/32", time.Second, func() { timedOut.Add(1) })
	silent := dialFrom(t, short, "127.0.0.2")
	silent.SetReadDeadline(time.Now().Add(patience))
	if n, err := silent.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("silent peer: read %d, %v; want the connection closed after the 1 s timeout", n, err)
	}
	if n := timedOut.Load(); n != 1 {
		t.Errorf("OnRefused called %d times for the silent peer, want 1", n)
	}
}

func TestCloseEndsAccept(t *testing.T) {
	ln := listen(t, "127.0.0.2/32", time.Second)
	ln.Close()
	_, err := ln.Accept()
	if !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
	}
}

func TestWithoutNetworksListenIsIdentity(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if got := Listen(raw, Options{}); got != raw {
		t.Fatal("Listen without networks wrapped the listener")
	}
}

// FuzzReadHeader: whatever a proxy peer sends, reading its header must
// not panic, and what follows an accepted header reaches the listener
// byte for byte.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 192.0.2.1 51234 993\r\nrest"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), 203, 0, 113, 7, 192, 0, 2, 1, 0xc8, 0x22, 0x03, 0xe1, 'x'))
	f.Add([]byte("a LOGIN alice secret\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			client.Write(in)
			client.Close()
		}()
		l := &listener{opts: Options{Timeout: patience}}
		c, err := l.readHeader(server)
		if err != nil {
			server.Close()
			return
		}
		defer c.Close()
		rest, _ := io.ReadAll(c)
		if !bytes.HasSuffix(in, rest) {
			t.Fatalf("after the header the listener read %q, which does not end the input %q", rest, in)
		}
		if strings.HasPrefix(string(in), "PROXY ") && len(rest) >= len(in) {
			t.Fatalf("a v1 header was not consumed: %q", rest)
		}
	})
}
