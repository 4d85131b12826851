package dial

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestQuiet: a ready connection is usable only while the server has said
// nothing and not closed it (Linux; elsewhere Quiet cannot tell).
func TestQuiet(t *testing.T) {
	tests := []struct {
		name   string
		server func(net.Conn)
		want   bool
	}{
		{"silent", func(net.Conn) {}, true},
		{"spoke", func(c net.Conn) { _, _ = io.WriteString(c, "421 4.4.2 timeout\r\n") }, false},
		{"closed", func(c net.Conn) { c.Close() }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			srv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			tc.server(srv)
			want := tc.want || runtime.GOOS != "linux" // elsewhere Quiet cannot tell
			got := Quiet(conn)
			// What the server did may take a moment to arrive (longer on
			// a busy machine): wait for it, up to a generous deadline.
			for deadline := time.Now().Add(time.Minute); got != want && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				got = Quiet(conn)
			}
			if got != want {
				t.Fatalf("Quiet = %v, want %v", got, want)
			}
			if tc.want {
				// Peeking consumed nothing and the connection still works.
				_, _ = io.WriteString(srv, "x")
				b := make([]byte, 1)
				_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
				if _, err := io.ReadFull(conn, b); err != nil || b[0] != 'x' {
					t.Fatalf("read after Quiet: %q %v", b, err)
				}
			}
		})
	}
}
