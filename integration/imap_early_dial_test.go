package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestIMAPEarlyDialSendsNoCredentials: passgate opens (or takes ready)
// its connection to Dovecot before the decision. For a refused login (a
// wrong app password, or the primary password of an MFA user) Dovecot
// gets the connection's set-up (connect; the ID with the client's address
// is queued to go out with the login, so a refused login sends none) and
// nothing more: no LOGIN, no AUTHENTICATE, no secret, as the bytes
// passgate sent and Dovecot's own log ("no auth attempts") show. An
// allowed login logs in on its connection, by master login for an app
// password and by passthrough for a user without MFA.
func TestIMAPEarlyDialSendsNoCredentials(t *testing.T) {
	d := env.dovecot
	tap := startUpstreamTap(t, d.IMAPAddr)
	p := startPassgate(t, passgateConfig{upstreams: []string{tap.addr}, upstreamTLS: "none"})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	masterB64 := base64.StdEncoding.EncodeToString([]byte("alice\x00" + d.MasterUser + "\x00" + d.MasterPassword))
	const wrong = "zzzz yyyy xxxx wwww" // shaped like an app password: looked up
	tests := []struct {
		name, user, password string
		ok                   bool
		loginLine            string // in Dovecot's line for an allowed login
	}{
		// The refusals first: the allowed logins' connections, opened
		// after theirs, show that the tap has seen all of theirs.
		{name: "fail/wrong-app-password", user: "alice", password: wrong},
		{name: "fail/primary-password-of-enforced-user", user: "alice", password: d.Users["alice"]},
		{name: "ok/app-password", user: "alice", password: pw, ok: true, loginLine: "Login: user=<alice>,"},
		{name: "ok/passthrough-without-mfa", user: "bob", password: d.Users["bob"], ok: true, loginLine: "Login: user=<bob>,"},
	}
	refused := map[string]string{} // ID's port field → case
	before := tap.count()
	for _, tc := range tests {
		reply, port, err := loginAndClose(p.imapsAddr, tc.user, tc.password)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.HasPrefix(reply, "a OK"); got != tc.ok {
			t.Fatalf("%s: reply %q, want OK: %v", tc.name, reply, tc.ok)
		}
		rport := "rport=" + strconv.Itoa(port) + ","
		if !tc.ok {
			if reply != "a "+uniformFailure+"\r\n" {
				t.Errorf("%s: reply %q, want the uniform failure", tc.name, reply)
			}
			refused[idPort(port)] = tc.name
			continue
		}
		sent := tap.waitSent(t, idPort(port))
		if !bytes.Contains(sent, []byte("AUTHENTICATE")) && !bytes.Contains(sent, []byte("LOGIN")) {
			t.Errorf("%s: an allowed login did not log in upstream; passgate sent %q", tc.name, clipBytes(sent))
		}
		waitLog(t, d, rport)
		if line := logLine(d.Log(), rport); !strings.Contains(line, tc.loginLine) {
			t.Errorf("%s: Dovecot's line for the login's connection is %q, want %q", tc.name, line, tc.loginLine)
		}
	}
	// Every connection opened for a refused login, closed by now.
	secrets := []string{d.MasterPassword, masterB64, d.Users["alice"], pw, wrong}
	opened := 0
	for _, c := range tap.closedSince(t, before) {
		name, forwarded := "", ""
		for port, n := range refused {
			if bytes.Contains(c, []byte(port)) {
				name, forwarded = n, port
			}
		}
		if name == "" && len(c) > 0 && !bytes.Contains(c, []byte("AUTHENTICATE")) && !bytes.Contains(c, []byte("LOGIN")) {
			t.Errorf("an upstream connection of no login sent %q", clipBytes(c))
		}
		if name == "" {
			continue // an allowed login's, or a ready one never used
		}
		opened++
		for _, word := range []string{"AUTHENTICATE", "LOGIN"} {
			if bytes.Contains(c, []byte(word)) {
				t.Errorf("%s: the refused login sent %q upstream: %q", name, word, clipBytes(c))
			}
		}
		for _, s := range secrets {
			if bytes.Contains(c, []byte(s)) {
				t.Errorf("%s: the refused login sent a secret (%.4s…) upstream", name, s)
			}
		}
		_, port, _ := strings.Cut(strings.TrimSuffix(forwarded, `"`), `"x-originating-port" "`)
		rport := "rport=" + port + ","
		waitLog(t, d, rport)
		if line := logLine(d.Log(), rport); !noAuthAttempt(line) {
			t.Errorf("%s: Dovecot's line for the connection is %q, want Dovecot's disconnection without an auth attempt", name, line)
		}
	}
	t.Logf("the %d refused logins had %d upstream connections, closed without a login", len(refused), opened)
}

// idPort is the field of passgate's ID that forwards the client's port.
func idPort(port int) string {
	return `"x-originating-port" "` + strconv.Itoa(port) + `"`
}

// loginAndClose logs in over implicit TLS with a raw conversation,
// closes the connection (logging out after a success) and returns the
// tagged reply to LOGIN and the client's port.
func loginAndClose(addr, user, password string) (string, int, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: patience}, "tcp", addr, env.certs.ClientTLS())
	if err != nil {
		return "", 0, fmt.Errorf("TLS to passgate: %w", err)
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.TCPAddr).Port
	conn.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		return "", port, fmt.Errorf("greeting: %w", err)
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", strconv.Quote(user), strconv.Quote(password))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", port, fmt.Errorf("reply to LOGIN: %w", err)
		}
		if !strings.HasPrefix(line, "a ") {
			continue
		}
		if strings.HasPrefix(line, "a OK") {
			if _, err := phaseCommand(conn, r, "b LOGOUT"); err != nil {
				return line, port, err
			}
		}
		return line, port, nil
	}
}

// logLine returns the last line of log that contains substr.
// noAuthAttempt reports whether a line of Dovecot's log is its
// disconnection of a connection that made no authentication attempt:
// "no auth attempts", or, when the connection closed before Dovecot's
// login process had finished its own handshake with its auth process
// (which a refused login's quick close can beat on a loaded machine),
// "disconnected before auth was ready".
func noAuthAttempt(line string) bool {
	return strings.Contains(line, "no auth attempts") || strings.Contains(line, "before auth was ready")
}

func logLine(log, substr string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}

func clipBytes(b []byte) string {
	if len(b) > 600 {
		b = b[:600]
	}
	return string(b)
}

// upstreamTap relays TCP connections to an upstream and keeps what the
// client side (passgate) sent on each.
type upstreamTap struct {
	addr string

	mu    sync.Mutex
	conns []*tappedConn
	added chan struct{} // signalled when a connection is accepted or closed
}

type tappedConn struct {
	sent   bytes.Buffer // guarded by upstreamTap.mu
	closed bool         // passgate closed its side
}

// startUpstreamTap listens on a free loopback port and relays every
// connection to upstream until the test ends.
func startUpstreamTap(t *testing.T, upstream string) *upstreamTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &upstreamTap{addr: ln.Addr().String(), added: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	var open sync.Map
	t.Cleanup(func() {
		ln.Close()
		open.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			open.Store(c, true)
			open.Store(up, true)
			tc := &tappedConn{}
			tap.mu.Lock()
			tap.conns = append(tap.conns, tc)
			tap.mu.Unlock()
			tap.signal()
			wg.Add(2)
			go func() { // upstream → passgate
				defer wg.Done()
				io.Copy(c, up)
				c.Close()
			}()
			go func() { // passgate → upstream, recorded
				defer wg.Done()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						tap.mu.Lock()
						tc.sent.Write(buf[:n])
						tap.mu.Unlock()
						up.Write(buf[:n])
					}
					if err != nil {
						break
					}
				}
				up.Close()
				tap.mu.Lock()
				tc.closed = true
				tap.mu.Unlock()
				tap.signal()
			}()
		}
	}()
	return tap
}

func (tap *upstreamTap) signal() {
	select {
	case tap.added <- struct{}{}:
	default:
	}
}

// count is the number of connections accepted so far.
func (tap *upstreamTap) count() int {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return len(tap.conns)
}

// waitSent waits until passgate closed a connection whose bytes hold
// mark, and returns them.
func (tap *upstreamTap) waitSent(t *testing.T, mark string) []byte {
	t.Helper()
	deadline := time.After(patience)
	for {
		tap.mu.Lock()
		var sent []byte
		for _, c := range tap.conns {
			if c.closed && bytes.Contains(c.sent.Bytes(), []byte(mark)) {
				sent = bytes.Clone(c.sent.Bytes())
			}
		}
		tap.mu.Unlock()
		if sent != nil {
			return sent
		}
		select {
		case <-tap.added:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no upstream connection with %s was closed within %v", mark, patience)
		}
	}
}

// closedSince waits until every connection after the first before is
// closed by passgate, and returns what passgate sent on each.
func (tap *upstreamTap) closedSince(t *testing.T, before int) [][]byte {
	t.Helper()
	deadline := time.After(patience)
	for {
		tap.mu.Lock()
		var all [][]byte
		open := 0
		for _, c := range tap.conns[before:] {
			if !c.closed {
				open++
			}
			all = append(all, bytes.Clone(c.sent.Bytes()))
		}
		tap.mu.Unlock()
		if open == 0 {
			return all
		}
		select {
		case <-tap.added:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%d upstream connections still open after %v", open, patience)
		}
	}
}

// TestIMAPEarlyDialProxyHeader: with forward_client "proxy" the upstream
// connection is opened for its client while the decision runs (none is
// kept ready: the PROXY header must be its first bytes), and Dovecot sees
// the real client's address for a login, and no auth attempt for a
// refused one.
func TestIMAPEarlyDialProxyHeader(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{upstreams: []string{d.IMAPProxyAddr}, upstreamTLS: "none", beforeServe: func(p *passgateInstance) {
		b, err := os.ReadFile(p.config)
		if err != nil {
			t.Fatal(err)
		}
		cfg := strings.Replace(string(b), "forward_client: id", "forward_client: proxy", 1)
		if err := os.WriteFile(p.config, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p.admin(t, "migrate")
	}})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	tests := []struct {
		name, from, password, want string
	}{
		{name: "fail/wrong-app-password", from: "127.0.0.71", password: "zzzz yyyy xxxx wwww", want: "no auth attempts"},
		{name: "ok/app-password", from: "127.0.0.72", password: pw, want: "Login: user=<alice>,"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := p.rawLoginFrom(t, tc.from, "alice", tc.password)
			if ok := strings.HasPrefix(got, "a OK"); ok != strings.HasPrefix(tc.name, "ok/") {
				t.Fatalf("reply %q", got)
			}
			rip := "rip=" + tc.from + ","
			matches := func(line string) bool {
				if tc.want == "no auth attempts" {
					return noAuthAttempt(line)
				}
				return strings.Contains(line, tc.want)
			}
			if !eventually(patience, func() bool { return matches(logLine(d.Log(), rip)) }) {
				if tc.want == "no auth attempts" && !strings.Contains(d.Log(), rip) {
					// The decision ended before the connection was up:
					// passgate dropped the dial, Dovecot saw nothing.
					return
				}
				t.Errorf("Dovecot's line for %s is %q, want %q", rip, logLine(d.Log(), rip), tc.want)
			}
		})
	}
}
