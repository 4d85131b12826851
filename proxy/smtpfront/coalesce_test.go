package smtpfront_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// countingListener counts the writes to every connection it accepted.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{Conn: c, n: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

// TestReplyIsOneWrite: every reply, EHLO's many lines included, leaves in
// one write to the connection, in plaintext and under TLS, and a reply
// that ends the session is still sent.
func TestReplyIsOneWrite(t *testing.T) {
	certs, err := testenv.NewCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stls, err := certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	srv := smtpfront.New(smtpfront.Options{Decider: newFakeDecider(t), Upstream: &fakeUpstream{}, TLSConfig: stls, Hostname: "mx.test"})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, smtpfront.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})

	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(patience))
	r := &raw{t: t, conn: c, r: bufio.NewReader(c)}
	r.expect("220 ")
	// step sends line and checks that its reply (of at least minLines
	// lines) took one write.
	step := func(line, prefix string, minLines int) {
		t.Helper()
		before := ln.writes.Load()
		r.send(line)
		got := r.expect(prefix)
		if n := countLines(got); n < minLines {
			t.Fatalf("%s: %d lines, want at least %d: %q", line, n, minLines, got)
		}
		// The reply was read in full, so its writes are done.
		if w := ln.writes.Load() - before; w != 1 {
			t.Errorf("%s: the %d-line reply took %d writes, want 1", line, countLines(got), w)
		}
	}
	step("EHLO client.test", "250-", 3)
	step("STARTTLS", "220 ", 1)
	tc := tls.Client(c, certs.ClientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r.conn, r.r = tc, bufio.NewReader(tc)
	step("EHLO client.test", "250-", 3)
	step("NOOP", "250 ", 1)
	r.send("QUIT")
	r.expect("221 ")
}

func countLines(s string) int {
	n := 0
	for i := range len(s) {
		if s[i] == '\n' {
			n++
		}
	}
	return n
}

// TestQuitReplyBeforeUpstreamQuit: the client's 221 leaves before
// passgate waits for the upstream's reply to its own QUIT.
func TestQuitReplyBeforeUpstreamQuit(t *testing.T) {
	f := newFixture(t, nil)
	gate := make(chan struct{})
	f.up.quitGate = gate
	defer close(gate)
	r := f.dialRaw(t, true)
	r.login()
	r.send("QUIT")
	// The upstream's QUIT is held until the test ends: the 221 must not
	// wait for it.
	r.expect("221 ")
}
