package imapupstream

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder starts a one-connection upstream that sends greeting, answers
// CAPABILITY if asked, and records every byte the client sends until it
// closes the connection. The bytes arrive on the returned channel.
func recorder(t *testing.T, greeting string) (string, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, greeting)
		var all []byte
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			all = append(all, buf[:n]...)
			if strings.HasSuffix(string(all), "CAPABILITY\r\n") {
				tag, _, _ := strings.Cut(string(all[strings.LastIndex(string(all[:len(all)-2]), "\n")+1:]), " ")
				io.WriteString(c, "* CAPABILITY IMAP4rev1 SASL-IR\r\n"+tag+" OK done\r\n")
			}
			if err != nil {
				break
			}
		}
		got <- string(all)
	}()
	return ln.Addr().String(), got
}

// TestOpenSendsNoCredentials: Open sends the connection's set-up and
// nothing else; Close then closes it without a word.
func TestOpenSendsNoCredentials(t *testing.T) {
	client := netip.MustParseAddrPort("192.0.2.7:4242")
	tests := []struct {
		name     string
		forward  string
		greeting string
		want     []string // in what the upstream receives
	}{
		// The ID is queued for the login's write: a connection closed
		// without a login never sends it.
		{name: "ok/id", forward: ForwardID, greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR ID] hi\r\n"},
		{name: "ok/none", forward: ForwardNone, greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n"},
		{name: "ok/no-capabilities-in-greeting", forward: ForwardNone, greeting: "* OK hi\r\n", want: []string{"p1 CAPABILITY\r\n"}},
		{name: "ok/proxy", forward: ForwardProxy, greeting: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", want: []string{"\r\n\r\n\x00\r\nQUIT\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := recorder(t, tc.greeting)
			u, err := New(Options{Addresses: []string{addr}, MasterUser: "passgate", MasterPassword: "m-pw", ForwardClient: tc.forward})
			if err != nil {
				t.Fatal(err)
			}
			p, err := u.Open(context.Background(), client, []string{"name", "Thunderbird"})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if err := p.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			sent := <-got
			for _, w := range tc.want {
				if !strings.Contains(sent, w) {
					t.Errorf("the upstream got %q, want %q in it", sent, w)
				}
			}
			for _, bad := range []string{"AUTHENTICATE", "LOGIN", "m-pw", b64("alice\x00passgate\x00m-pw"), "LOGOUT"} {
				if strings.Contains(sent, bad) {
					t.Errorf("the upstream got %q before any login", bad)
				}
			}
			if strings.Contains(sent, " ID ") {
				t.Errorf("ID sent without a login (forward_client %s): %q", tc.forward, sent)
			}
			if _, _, err := p.Login(context.Background(), "alice", ""); err == nil {
				t.Error("Login after Close succeeded")
			}
		})
	}
}

func TestPendingLogin(t *testing.T) {
	master := b64("alice\x00passgate\x00m-pw")
	tests := []struct {
		name     string
		opts     Options
		password string
		steps    []step
		okText   string
		refused  bool
	}{
		{name: "ok/master", opts: Options{},
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR ID] hi\r\n", expect: "p1 AUTHENTICATE PLAIN " + master + "\r\n"},
				{send: "p1 OK [CAPABILITY IMAP4rev1] Logged in\r\n"},
			}, okText: "OK [CAPABILITY IMAP4rev1] Logged in"},
		{name: "ok/capabilities-asked-before-login", opts: Options{},
			steps: []step{
				{send: "* OK hi\r\n", expect: "p1 CAPABILITY\r\n"},
				{send: "* CAPABILITY IMAP4rev1 SASL-IR\r\np1 OK done\r\n", expect: "p2 AUTHENTICATE PLAIN " + master + "\r\n"},
				{send: "p2 OK in\r\n"},
			}, okText: "OK in"},
		{name: "ok/passthrough", opts: Options{Login: LoginPassthrough}, password: "bob-pw",
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 LOGIN \"alice\" \"bob-pw\"\r\n"},
				{send: "p1 OK in\r\n"},
			}, okText: "OK in"},
		{name: "fail/refused", opts: Options{},
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 AUTHENTICATE PLAIN " + master + "\r\n"},
				{send: "p1 NO [AUTHENTICATIONFAILED] no\r\n"},
			}, refused: true},
		{name: "fail/passthrough-without-password", opts: Options{Login: LoginPassthrough},
			steps: []step{{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n"}}, refused: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Addresses = []string{scripted(t, tc.steps...)}
			o.MasterUser, o.MasterPassword = "passgate", "m-pw"
			u, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			p, err := u.Open(context.Background(), netip.MustParseAddrPort("192.0.2.8:1234"), nil)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			conn, okText, err := p.Login(context.Background(), "alice", tc.password)
			if tc.refused {
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("Login: %v, want ErrRefused", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			defer conn.Close()
			if okText != tc.okText {
				t.Errorf("okText %q, want %q", okText, tc.okText)
			}
			if err := p.Close(); err != nil {
				t.Errorf("Close after Login: %v", err)
			}
			if _, err := conn.Write([]byte("x NOOP\r\n")); err != nil {
				t.Errorf("the logged-in connection was closed by Close: %v", err)
			}
		})
	}
}

// TestPendingFailsOver: a connection opened early that fails at login
// for another reason than the credentials goes on with the next address,
// and the error of a login that fails everywhere names every address.
func TestPendingFailsOver(t *testing.T) {
	master := b64("alice\x00passgate\x00m-pw")
	unavailable := func() string {
		return scripted(t, step{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 AUTHENTICATE PLAIN " + master + "\r\n"},
			step{send: "p1 NO [UNAVAILABLE] auth down\r\n"})
	}
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	good := scripted(t, step{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 AUTHENTICATE PLAIN " + master + "\r\n"},
		step{send: "p1 OK welcome\r\n"})

	u, err := New(Options{Addresses: []string{deadAddr, unavailable(), good}, MasterUser: "passgate", MasterPassword: "m-pw"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := u.Open(context.Background(), netip.AddrPort{}, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	conn, okText, err := p.Login(context.Background(), "alice", "")
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	conn.Close()
	if okText != "OK welcome" {
		t.Errorf("okText %q", okText)
	}

	second := unavailable()
	u, err = New(Options{Addresses: []string{deadAddr, second}, MasterUser: "passgate", MasterPassword: "m-pw"})
	if err != nil {
		t.Fatal(err)
	}
	p, err = u.Open(context.Background(), netip.AddrPort{}, nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	_, _, err = p.Login(context.Background(), "alice", "")
	var ue *UnavailableError
	if !errors.As(err, &ue) || len(ue.Attempts) != 2 || ue.Attempts[0].Address != deadAddr || ue.Attempts[1].Address != second {
		t.Fatalf("Login: %v, want an UnavailableError naming both addresses in order", err)
	}
}

func TestOpenUnavailable(t *testing.T) {
	hangs := scripted(t) // accepts, never greets
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	tests := []struct {
		name    string
		addrs   []string
		timeout time.Duration
		want    error
	}{
		{name: "fail/refused-connection", addrs: []string{deadAddr}, timeout: time.Minute},
		{name: "fail/cancelled-while-upstream-hangs", addrs: []string{hangs, deadAddr}, timeout: 200 * time.Millisecond, want: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := New(Options{Addresses: tc.addrs, Login: LoginPassthrough})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			p, err := u.Open(ctx, netip.AddrPort{}, nil)
			if p != nil {
				t.Fatal("Open returned a connection")
			}
			var ue *UnavailableError
			if !errors.As(err, &ue) || len(ue.Attempts) != len(tc.addrs) {
				t.Fatalf("Open: %v, want an UnavailableError naming %d addresses", err, len(tc.addrs))
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("Open: %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d > loginTimeout/2 {
				t.Errorf("Open took %s", d)
			}
		})
	}
}

// TestOpenAbandonedLogsNoFailure: a connection that Open gives up because
// its context was cancelled (the decision refused the login, the client
// left) is not logged as a failed upstream, while one whose upstream does
// not answer in time is.
func TestOpenAbandonedLogsNoFailure(t *testing.T) {
	tests := []struct {
		name     string
		end      func(cancel context.CancelFunc) // how Open's context ends once the upstream accepted
		deadline time.Duration
		wantWarn bool
	}{
		{name: "cancelled", end: func(cancel context.CancelFunc) { cancel() }, deadline: time.Hour},
		{name: "upstream-silent", end: func(context.CancelFunc) {}, deadline: 300 * time.Millisecond, wantWarn: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c // never greets
				}
			}()
			var logged strings.Builder
			var mu sync.Mutex
			log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, &slog.HandlerOptions{Level: slog.LevelDebug}))
			u, err := New(Options{Addresses: []string{ln.Addr().String()}, Login: LoginPassthrough, Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			go func() {
				select {
				case c := <-accepted:
					defer c.Close()
					tc.end(cancel)
					<-ctx.Done()
				case <-time.After(time.Minute):
				}
			}()
			if p, err := u.Open(ctx, netip.AddrPort{}, nil); p != nil || err == nil {
				t.Fatalf("Open: %v, %v; want no connection and an error", p, err)
			}
			mu.Lock()
			out := logged.String()
			mu.Unlock()
			if warned := strings.Contains(out, "level=WARN msg=\"upstream login failed\""); warned != tc.wantWarn {
				t.Errorf("warned %v, want %v; log:\n%s", warned, tc.wantWarn, out)
			}
			if !strings.Contains(out, "upstream login failed") {
				t.Errorf("the attempt is not logged at all:\n%s", out)
			}
		})
	}
}

// lockedWriter serialises writes to a builder read by the test.
type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
