package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/revoke"
)

// pipePair returns two connected TCP connections on loopback.
func pipePair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

func TestRunCopiesBothWaysAndCounts(t *testing.T) {
	tests := []struct {
		name    string
		up, dn  int
		closeBy string
	}{
		{"small", 10, 20, "client"},
		{"bulk", 3 << 20, 1 << 20, "upstream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clientApp, clientSide := pipePair(t)
			upSide, upApp := pipePair(t)
			upData := make([]byte, tc.up)
			dnData := make([]byte, tc.dn)
			rand.Read(upData)
			rand.Read(dnData)
			res := make(chan Stats, 1)
			go func() { res <- Run(context.Background(), clientSide, upSide, Options{}) }()

			gotUp := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(io.LimitReader(upApp, int64(tc.up))); gotUp <- b }()
			gotDn := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(io.LimitReader(clientApp, int64(tc.dn))); gotDn <- b }()
			go clientApp.Write(upData)
			go upApp.Write(dnData)
			if b := <-gotUp; !bytes.Equal(b, upData) {
				t.Fatalf("upstream got %d bytes, want %d identical", len(b), len(upData))
			}
			if b := <-gotDn; !bytes.Equal(b, dnData) {
				t.Fatalf("client got %d bytes, want %d identical", len(b), len(dnData))
			}
			if tc.closeBy == "client" {
				clientApp.Close()
			} else {
				upApp.Close()
			}
			var st Stats
			select {
			case st = <-res:
			case <-time.After(patience):
				t.Fatal("Run did not return after one side closed")
			}
			if st.BytesIn != int64(tc.up) || st.BytesOut != int64(tc.dn) || st.EndedBy != tc.closeBy {
				t.Errorf("stats = %+v", st)
			}
			// The other side must see the close too.
			other := upApp
			if tc.closeBy == "upstream" {
				other = clientApp
			}
			other.SetReadDeadline(time.Now().Add(patience))
			if _, err := other.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("other side not closed: %v", err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestRevokeClosesSession(t *testing.T) {
	reg := revoke.NewRegistry()
	clientApp, clientSide := pipePair(t)
	upSide, _ := pipePair(t)
	ctx, release := reg.Track(context.Background(), 42)
	defer release()
	if reg.Len() != 1 || len(reg.IDs()) != 1 {
		t.Fatalf("registry len %d", reg.Len())
	}
	res := make(chan Stats, 1)
	go func() { res <- Run(ctx, clientSide, upSide, Options{}) }()
	if n := reg.Revoke(42); n != 1 {
		t.Fatalf("Revoke = %d", n)
	}
	select {
	case st := <-res:
		if st.EndedBy != "revoked" {
			t.Errorf("EndedBy = %q", st.EndedBy)
		}
	case <-time.After(patience):
		t.Fatal("revoked session still open")
	}
	clientApp.SetReadDeadline(time.Now().Add(patience))
	if _, err := clientApp.Read(make([]byte, 1)); err != io.EOF && !strings.Contains(err.Error(), "reset") {
		t.Errorf("client read after revoke: %v", err)
	}
	if reg.Revoke(42) != 0 {
		t.Error("second revoke found sessions")
	}
}

func TestWithBuffered(t *testing.T) {
	a, b := pipePair(t)
	defer a.Close()
	defer b.Close()
	a.Write([]byte("LOGIN x y\r\nA2 SELECT INBOX\r\n"))
	br := bufio.NewReader(b)
	line, _ := br.ReadString('\n')
	if line != "LOGIN x y\r\n" {
		t.Fatalf("line %q", line)
	}
	// Wait until the pipelined command sits in the buffer.
	for br.Buffered() == 0 {
		br.Peek(1)
	}
	c := WithBuffered(b, br)
	got := make([]byte, 64)
	n, _ := c.Read(got)
	if string(got[:n]) != "A2 SELECT INBOX\r\n" {
		t.Errorf("buffered = %q", got[:n])
	}
	if WithBuffered(b, bufio.NewReader(b)) != b {
		t.Error("empty buffer should return the conn itself")
	}
}

func TestNoGoroutineOutlivesRun(t *testing.T) {
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		c1, c2 := pipePair(t)
		u1, u2 := pipePair(t)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { Run(ctx, c2, u1, Options{}); close(done) }()
		cancel()
		<-done
		c1.Close()
		u2.Close()
	}
	deadline := time.Now().Add(patience)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("goroutines: %d before, %d after", before, n)
	}
}

// BenchmarkRun measures relay throughput over loopback TCP.
func BenchmarkRun(b *testing.B) {
	clientApp, clientSide := pipePair(b)
	upSide, upApp := pipePair(b)
	go Run(context.Background(), clientSide, upSide, Options{})
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	go io.Copy(io.Discard, clientApp)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		upApp.Write(buf)
	}
	b.StopTimer()
	clientApp.Close()
	upApp.Close()
}

// BenchmarkRunCommands relays one small command and its reply at a time,
// as an IMAP client that waits for each reply does, with the buffers
// shared between sessions (a listener's) and without.
func BenchmarkRunCommands(b *testing.B) {
	for _, shared := range []bool{true, false} {
		b.Run(map[bool]string{true: "shared-buffers", false: "own-buffers"}[shared], func(b *testing.B) {
			clientApp, clientSide := pipePair(b)
			upSide, upApp := pipePair(b)
			opts := Options{}
			if shared {
				opts.Buffers = NewBuffers()
			}
			done := make(chan struct{})
			go func() { Run(context.Background(), clientSide, upSide, opts); close(done) }()
			go func() {
				buf := make([]byte, 64)
				reply := bytes.Repeat([]byte("x"), 100)
				for {
					if _, err := io.ReadFull(upApp, buf[:30]); err != nil {
						return
					}
					if _, err := upApp.Write(reply); err != nil {
						return
					}
				}
			}()
			cmd := bytes.Repeat([]byte("c"), 30)
			got := make([]byte, 100)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := clientApp.Write(cmd); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(clientApp, got); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			clientApp.Close()
			upApp.Close()
			<-done
		})
	}
}
