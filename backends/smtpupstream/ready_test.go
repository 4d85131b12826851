package smtpupstream

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestReadyConnections: with Options.Ready, a connection is opened ahead
// of the next login (greeted, past EHLO, no credential sent), Dial hands
// it out and opens a replacement, and Login logs it in; Close closes what
// is ready.
func TestReadyConnections(t *testing.T) {
	mta, addr := startMTA(t, false, nil)
	c, err := New(Options{Addresses: []string{addr}, TLS: TLSNone, Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw",
		Ready: 1, ReadyIdle: patience})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	login := func(wantReady bool) {
		t.Helper()
		p, err := c.Dial(context.Background(), client)
		if err != nil {
			t.Fatal(err)
		}
		if p.ready != wantReady {
			t.Fatalf("Dial handed out a ready connection: %v, want %v", p.ready, wantReady)
		}
		s, err := p.Login(context.Background(), "alice", "", "client.test")
		if err != nil {
			t.Fatal(err)
		}
		_ = s.Quit()
	}
	waitReady := func() {
		t.Helper()
		for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
			c.ready.mu.Lock()
			n := len(c.ready.conns)
			c.ready.mu.Unlock()
			if n == 1 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("no connection became ready")
			}
		}
	}
	login(false) // the first Dial finds none ready and starts one
	waitReady()
	mta.mu.Lock()
	conns, auths := len(mta.remotes), len(mta.auths)
	mta.mu.Unlock()
	if conns != 2 || auths != 1 {
		t.Fatalf("upstream saw %d connections and %d logins; want 2 (one ready, not logged in) and 1", conns, auths)
	}
	login(true)
	waitReady()
	mta.mu.Lock()
	if len(mta.remotes) != 3 || len(mta.auths) != 2 || mta.auths[1] != "alice/master" {
		t.Errorf("upstream saw connections %v, logins %v; want 3 and the ready one logged in as alice/master", mta.remotes, mta.auths)
	}
	mta.mu.Unlock()
	c.Close()
	if p, err := c.Dial(context.Background(), client); err != nil || p.ready {
		t.Fatalf("Dial after Close: ready %v, err %v; want a new connection", p != nil && p.ready, err)
	} else {
		p.Close()
	}
}

// TestQuiet: a ready connection is usable only while the server has said
// nothing and not closed it.
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
			got := quiet(conn)
			// What the server did may take a moment to arrive.
			for deadline := time.Now().Add(time.Second); got != tc.want && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				got = quiet(conn)
			}
			if got != tc.want {
				t.Fatalf("quiet = %v, want %v", got, tc.want)
			}
			if tc.want {
				// Peeking consumed nothing and the connection still works.
				_, _ = io.WriteString(srv, "x")
				b := make([]byte, 1)
				_ = conn.SetReadDeadline(time.Now().Add(patience))
				if _, err := io.ReadFull(conn, b); err != nil || b[0] != 'x' {
					t.Fatalf("read after quiet: %q %v", b, err)
				}
			}
		})
	}
}

// TestPendingCloseQuits: a connection closed without a login (a refused
// login, an expired ready one) says QUIT and nothing else after EHLO:
// no XCLIENT, no AUTH.
func TestPendingCloseQuits(t *testing.T) {
	addr, got := scriptedXClient(t, "250-XCLIENT NAME ADDR PORT LOGIN\r\n", "")
	c, err := New(Options{Addresses: []string{addr}, TLS: TLSNone, Login: LoginXClient, ForwardClient: ForwardXClient, LoginTimeout: patience})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Dial(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-got:
		if line != "QUIT" {
			t.Fatalf("after EHLO the server got %q, want QUIT", line)
		}
	case <-time.After(patience):
		t.Fatal("nothing after EHLO")
	}
}
