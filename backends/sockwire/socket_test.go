package sockwire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// socketPair returns a TCP connection on loopback as a Socket (with
// wait) and its peer.
func socketPair(t *testing.T, wait func()) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s := NewSocket(nc, wait)
	t.Cleanup(func() { s.Close(); peer.Close() })
	return s, peer
}

// TestSocketReadWrite moves data both ways, larger than the socket
// buffers, so that writes wait for the peer to read and reads wait for
// the peer to write.
func TestSocketReadWrite(t *testing.T) {
	for _, size := range []int{1, 100, 64 << 10, 8 << 20} {
		t.Run("", func(t *testing.T) {
			s, peer := socketPair(t, func() {})
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(i * 7)
			}
			// Socket to peer.
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(io.LimitReader(peer, int64(size)))
				got <- b
			}()
			n, err := s.Write(want)
			if err != nil || n != size {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, size)
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("peer read %d bytes, not those written", len(b))
			}
			// Peer to Socket.
			go peer.Write(want)
			b, err := io.ReadAll(io.LimitReader(s, int64(size)))
			if err != nil || !bytes.Equal(b, want) {
				t.Fatalf("Socket read %d bytes (%v), not those written", len(b), err)
			}
		})
	}
}

// TestSocketErrors checks that Read and Write end as net.Conn's do.
func TestSocketErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(s, peer net.Conn)
		op    func(s net.Conn) error
		is    error
	}{
		{"read EOF", func(_, peer net.Conn) { peer.Close() }, func(s net.Conn) error {
			_, err := s.Read(make([]byte, 10))
			return err
		}, io.EOF},
		{"read deadline", func(s, _ net.Conn) { s.SetReadDeadline(time.Now().Add(10 * time.Millisecond)) }, func(s net.Conn) error {
			_, err := s.Read(make([]byte, 10))
			return err
		}, os.ErrDeadlineExceeded},
		{"read closed", func(s, _ net.Conn) { s.Close() }, func(s net.Conn) error {
			_, err := s.Read(make([]byte, 10))
			return err
		}, net.ErrClosed},
		{"write deadline", func(s, _ net.Conn) { s.SetWriteDeadline(time.Now().Add(10 * time.Millisecond)) }, func(s net.Conn) error {
			// More than the socket buffers hold, to a peer that does not read.
			_, err := s.Write(make([]byte, 64<<20))
			return err
		}, os.ErrDeadlineExceeded},
		{"write closed", func(s, _ net.Conn) { s.Close() }, func(s net.Conn) error {
			_, err := s.Write([]byte("x"))
			return err
		}, net.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, peer := socketPair(t, nil)
			tt.setup(s, peer)
			if err := tt.op(s); !errors.Is(err, tt.is) {
				t.Fatalf("error %v, want %v", err, tt.is)
			}
		})
	}
}

// TestSocketCloseEndsWaits checks that Close ends a read and a write
// that wait for the peer, as stop in proxy/ldapfront relies on.
func TestSocketCloseEndsWaits(t *testing.T) {
	s, _ := socketPair(t, nil)
	errs := make(chan error, 2)
	go func() {
		_, err := s.Read(make([]byte, 10))
		errs <- err
	}()
	go func() {
		_, err := s.Write(make([]byte, 64<<20))
		errs <- err
	}()
	s.Close() // before or while they wait: either way both end
	for range 2 {
		if err := <-errs; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("error %v, want net.ErrClosed", err)
		}
	}
}

// TestSocketConcurrentWrites checks that writes from several goroutines
// each go out whole.
func TestSocketConcurrentWrites(t *testing.T) {
	s, peer := socketPair(t, nil)
	const writers, chunk = 8, 100 << 10
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, writers*chunk))
		got <- b
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			if _, err := s.Write(bytes.Repeat([]byte{byte('a' + w)}, chunk)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	b := <-got
	if len(b) != writers*chunk {
		t.Fatalf("read %d bytes, want %d", len(b), writers*chunk)
	}
	for i := 0; i < len(b); i += chunk {
		if !bytes.Equal(b[i:i+chunk], bytes.Repeat(b[i:i+1], chunk)) {
			t.Fatalf("chunk at %d mixes writes", i)
		}
	}
}

// wrapped is a listener's wrapper of a socket, as proxy/connlimit's.
type wrapped struct{ net.Conn }

func TestSocketNetConn(t *testing.T) {
	_, peer := socketPair(t, nil)
	w := wrapped{peer}
	for _, wait := range []func(){nil, func() {}} {
		s := NewSocket(w, wait)
		if wait == nil {
			if s != net.Conn(w) {
				t.Fatalf("NewSocket of a connection without RawConn and no wait = %T, want it unchanged", s)
			}
			continue
		}
		u, ok := s.(interface{ NetConn() net.Conn })
		if !ok || u.NetConn() != net.Conn(w) {
			t.Fatalf("NetConn of %T does not return the wrapped connection", s)
		}
	}
	s, _ := socketPair(t, nil)
	if u, ok := s.(interface{ NetConn() net.Conn }); !ok || u.NetConn() == nil {
		t.Fatalf("NetConn of %T missing", s)
	}
}
