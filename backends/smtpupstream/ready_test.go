package smtpupstream

import (
	"bufio"
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
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
			n := c.ready.Len()
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

// TestReadyConnectionServerHung: a ready connection whose server has
// stopped answering (a hung server, or a host gone without a FIN: the
// socket looks quiet) is not handed out. Dial checks it with a NOOP and,
// finding no answer, tries a new connection, so that an upstream that is
// down is found before the decision, as without a ready set.
func TestReadyConnectionServerHung(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hung := make(chan struct{})
	var seen []string // the commands the server received, in order
	var mu sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				select {
				case <-hung:
					<-t.Context().Done() // no greeting: a server that hangs
					return
				default:
				}
				_, _ = io.WriteString(conn, "220 mta.test ESMTP\r\n")
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					mu.Lock()
					seen = append(seen, strings.TrimSpace(line))
					mu.Unlock()
					select {
					case <-hung:
						continue // reads, never answers
					default:
					}
					if strings.HasPrefix(line, "EHLO") {
						_, _ = io.WriteString(conn, "250-mta.test\r\n250 XCLIENT LOGIN ADDR PORT\r\n")
					}
				}
			}()
		}
	}()
	c, err := New(Options{Addresses: []string{ln.Addr().String()}, TLS: TLSNone, Login: LoginXClient,
		Ready: 1, ReadyIdle: patience, DialTimeout: 5 * time.Second, LoginTimeout: 5 * time.Second})
	// The timeouts bound the first Dial and the ready opening too, which
	// must succeed however busy the machine; once the server hangs, Dial
	// waits them out (about 10 s).
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, err := c.Dial(context.Background(), client) // none ready yet: a new one, and one opened ahead
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		n := c.ready.Len()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection became ready")
		}
	}
	close(hung)
	p, err = c.Dial(context.Background(), client)
	if err == nil {
		p.Close()
		t.Fatal("Dial handed out a connection of a server that no longer answers")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(seen, "NOOP") {
		t.Errorf("the server received %q; want a NOOP on the ready connection", seen)
	}
	for _, cmd := range seen {
		if strings.HasPrefix(cmd, "XCLIENT") || strings.HasPrefix(cmd, "AUTH") {
			t.Errorf("the server received %q before any login", cmd)
		}
	}
}
