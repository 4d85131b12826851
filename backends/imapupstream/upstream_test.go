package imapupstream

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	proxyproto "github.com/pires/go-proxyproto"
)

// step is one move of a scripted upstream: send writes bytes; expect
// reads exactly len(expect) bytes and compares them.
type step struct {
	send   string
	expect string
}

// scripted starts a one-connection upstream that plays steps and then
// holds the connection open until the test ends. It returns its address.
// Mismatches are reported through t.
func scripted(t *testing.T, steps ...step) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		go func() { <-done; c.Close() }()
		r := bufio.NewReader(c)
		for i, s := range steps {
			if s.send != "" {
				if _, err := io.WriteString(c, s.send); err != nil {
					t.Errorf("step %d: send: %v", i, err)
					return
				}
			}
			if s.expect != "" {
				got := make([]byte, len(s.expect))
				if _, err := io.ReadFull(r, got); err != nil {
					t.Errorf("step %d: expected %q: %v (got %q)", i, s.expect, err, got)
					return
				}
				if string(got) != s.expect {
					t.Errorf("step %d: got %q, want %q", i, got, s.expect)
					return
				}
			}
		}
		<-done
	}()
	return ln.Addr().String()
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestLoginScripted(t *testing.T) {
	const greeting = "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN ID] ready\r\n"
	const greetingNoCaps = "* OK ready\r\n"
	master := Options{Login: LoginMaster, MasterUser: "passgate", MasterPassword: "m-pw", ForwardClient: ForwardNone}
	tests := []struct {
		name    string
		opts    Options
		req     Request
		steps   []step
		wantOK  string
		wantErr error // ErrRefused, or nil for success; see wantUnavail
		unavail bool
		after   string // bytes the upstream sent after the OK, which the conn must yield
	}{
		{
			name: "ok/authzid-sasl-ir", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"},
			},
			wantOK: "OK [CAPABILITY IMAP4rev1 IDLE] Logged in",
		},
		{
			name: "ok/authzid-continuation-without-sasl-ir", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", expect: "p1 AUTHENTICATE PLAIN\r\n"},
				{send: "+ \r\n", expect: b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p1 OK Logged in\r\n"},
			},
			wantOK: "OK Logged in",
		},
		{
			name: "ok/capability-asked-when-greeting-has-none", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greetingNoCaps, expect: "p1 CAPABILITY\r\n"},
				{send: "* CAPABILITY IMAP4rev1 SASL-IR\r\np1 OK done\r\n", expect: "p2 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p2 OK Logged in\r\n"},
			},
			wantOK: "OK Logged in",
		},
		{
			name: "ok/separator-quoted", opts: Options{Login: LoginMaster, MasterUser: "passgate", MasterPassword: "m-pw", MasterStyle: MasterSeparator, Separator: "*"},
			req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 LOGIN \"alice*passgate\" \"m-pw\"\r\n"},
				{send: "p1 OK Logged in\r\n"},
			},
			wantOK: "OK Logged in",
		},
		{
			name: "ok/passthrough-synchronising-literal", opts: Options{Login: LoginPassthrough},
			req: Request{User: "bob", Password: "p\"w\\{1}"},
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1] ready\r\n", expect: "p1 LOGIN \"bob\" {7}\r\n"},
				{send: "+ go ahead\r\n", expect: "p\"w\\{1}\r\n"},
				{send: "p1 OK Logged in\r\n"},
			},
			wantOK: "OK Logged in",
		},
		{
			name: "ok/passthrough-literal-plus", opts: Options{Login: LoginPassthrough},
			req: Request{User: "bob", Password: "pä"},
			steps: []step{
				{send: greeting, expect: "p1 LOGIN \"bob\" {3+}\r\npä\r\n"},
				{send: "p1 OK Logged in\r\n"},
			},
			wantOK: "OK Logged in",
		},
		{
			name: "ok/untagged-literal-and-bytes-after-ok", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "* ID (\"name\" {7}\r\np1 OK\r\n)\r\np1 OK Logged in\r\n* 3 EXISTS\r\n"},
			},
			wantOK: "OK Logged in",
			after:  "* 3 EXISTS\r\n",
		},
		{
			name: "fail/no", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p1 NO [AUTHORIZATIONFAILED] Authorization failed\r\n"},
			},
			wantErr: ErrRefused,
		},
		{
			name: "fail/bad", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p1 BAD nonsense\r\n"},
			},
			wantErr: ErrRefused,
		},
		{
			name: "fail/no-unavailable-is-not-a-refusal", opts: master, req: Request{User: "alice"},
			steps: []step{
				{send: greeting, expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
				{send: "p1 NO [UNAVAILABLE] Temporary authentication failure\r\n"},
			},
			unavail: true,
		},
		{name: "fail/preauth", opts: master, req: Request{User: "alice"}, steps: []step{{send: "* PREAUTH hello\r\n"}}, unavail: true},
		{name: "fail/bye", opts: master, req: Request{User: "alice"}, steps: []step{{send: "* BYE too busy\r\n"}}, unavail: true},
		{name: "fail/garbage-greeting", opts: master, req: Request{User: "alice"}, steps: []step{{send: "HTTP/1.1 400 Bad\r\n"}}, unavail: true},
		{name: "fail/huge-line", opts: master, req: Request{User: "alice"}, steps: []step{{send: "* OK " + strings.Repeat("x", maxLineLength+10) + "\r\n"}}, unavail: true},
		{name: "fail/huge-literal", opts: master, req: Request{User: "alice"}, steps: []step{{send: "* OK {999999999}\r\n"}}, unavail: true},
		{
			name: "fail/starttls-injection", opts: Options{Login: LoginPassthrough, TLS: TLSStartTLS},
			req: Request{User: "bob", Password: "pw"},
			steps: []step{
				{send: "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n", expect: "p1 STARTTLS\r\n"},
				{send: "p1 OK go\r\n* injected\r\n"},
			},
			unavail: true,
		},
		{
			name: "fail/starttls-not-offered", opts: Options{Login: LoginPassthrough, TLS: TLSStartTLS},
			req:     Request{User: "bob", Password: "pw"},
			steps:   []step{{send: "* OK [CAPABILITY IMAP4rev1] ready\r\n"}},
			unavail: true,
		},
		{
			name: "fail/separator-in-user-never-sent", opts: Options{Login: LoginMaster, MasterUser: "passgate", MasterPassword: "m-pw", MasterStyle: MasterSeparator},
			req: Request{User: "alice*passgate"}, wantErr: ErrRefused,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var addr string
			if tc.steps != nil {
				addr = scripted(t, tc.steps...)
			} else {
				addr = "127.0.0.1:1"
			}
			var logs strings.Builder
			opts := tc.opts
			opts.Addresses = []string{addr}
			opts.DialTimeout = patience
			opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			u, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			conn, okText, err := u.Login(ctx, tc.req)
			for _, secret := range []string{"m-pw", tc.req.Password, b64("alice\x00passgate\x00m-pw")} {
				if secret != "" && (strings.Contains(logs.String(), secret) || (err != nil && strings.Contains(err.Error(), secret))) {
					t.Errorf("a secret reached the log or the error: %v\n%s", err, logs.String())
				}
			}
			switch {
			case tc.unavail:
				var ue *UnavailableError
				if !errors.As(err, &ue) || errors.Is(err, ErrRefused) {
					t.Fatalf("err = %v, want *UnavailableError", err)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			default:
				if err != nil {
					t.Fatalf("Login: %v", err)
				}
				defer conn.Close()
				if okText != tc.wantOK {
					t.Errorf("okText = %q, want %q", okText, tc.wantOK)
				}
				if tc.after != "" {
					got := make([]byte, len(tc.after))
					conn.SetReadDeadline(time.Now().Add(patience))
					if _, err := io.ReadFull(conn, got); err != nil || string(got) != tc.after {
						t.Errorf("after the OK the conn yields %q (%v), want %q", got, err, tc.after)
					}
				}
			}
		})
	}
}

func TestIDCommand(t *testing.T) {
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{
			name: "client-fields-without-x",
			req:  Request{Client: netip.MustParseAddrPort("[::ffff:198.51.100.7]:5678"), ClientID: []string{"name", "Thunderbird", "X-Originating-IP", "6.6.6.6", "version", "a\"b"}},
			want: `ID ("x-originating-ip" "198.51.100.7" "x-originating-port" "5678" "x-connected-ip" "127.0.0.1" "x-connected-port" "40000" "name" "Thunderbird")`,
		},
		{
			name: "ipv6-no-client-id",
			req:  Request{Client: netip.MustParseAddrPort("[2001:db8::1]:1")},
			want: `ID ("x-originating-ip" "2001:db8::1" "x-originating-port" "1" "x-connected-ip" "127.0.0.1" "x-connected-port" "40000" "name" "passgate")`,
		},
		{
			name: "no-client",
			req:  Request{},
			want: `ID ("x-connected-ip" "127.0.0.1" "x-connected-port" "40000" "name" "passgate")`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := string(idCommand(tc.req, local)); got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
	// At most 30 pairs whatever the client sends.
	var many []string
	for range 100 {
		many = append(many, "k", "v")
	}
	if n := strings.Count(string(idCommand(Request{ClientID: many}, local)), `"`) / 4; n > maxIDPairs {
		t.Errorf("%d pairs, limit %d", n, maxIDPairs)
	}
}

func TestProxyHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		h   *proxyproto.Header
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		h, err := proxyproto.Read(bufio.NewReader(c))
		got <- result{h, err}
		io.WriteString(c, "* BYE enough\r\n")
	}()
	u, err := New(Options{Addresses: []string{ln.Addr().String()}, Login: LoginPassthrough, ForwardClient: ForwardProxy})
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("198.51.100.9:4321")
	_, _, err = u.Login(context.Background(), Request{User: "bob", Password: "pw", Client: client})
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Login: %v, want unavailable after BYE", err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("read PROXY header: %v", r.err)
	}
	src, _, ok := r.h.TCPAddrs()
	if !ok || r.h.Version != 2 || src.AddrPort() != client {
		t.Errorf("PROXY header %+v, want v2 from %s", r.h, client)
	}
}

func TestAddressesInOrder(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	unavailable := scripted(t, step{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 AUTHENTICATE PLAIN "},
		step{expect: b64("alice\x00passgate\x00m-pw") + "\r\n", send: ""}, step{send: "p1 NO [UNAVAILABLE] auth down\r\n"})
	good := scripted(t, step{send: "* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n", expect: "p1 AUTHENTICATE PLAIN " + b64("alice\x00passgate\x00m-pw") + "\r\n"},
		step{send: "p1 OK welcome\r\n"})
	u, err := New(Options{Addresses: []string{deadAddr, unavailable, good}, MasterUser: "passgate", MasterPassword: "m-pw"})
	if err != nil {
		t.Fatal(err)
	}
	conn, okText, err := u.Login(context.Background(), Request{User: "alice"})
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	conn.Close()
	if okText != "OK welcome" {
		t.Errorf("okText %q", okText)
	}
}

func TestUnavailableErrorNamesEveryAddress(t *testing.T) {
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	u, err := New(Options{Addresses: addrs, Login: LoginPassthrough})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = u.Login(context.Background(), Request{User: "bob", Password: "pw"})
	var ue *UnavailableError
	if !errors.As(err, &ue) || len(ue.Attempts) != 2 {
		t.Fatalf("err = %v, want 2 attempts", err)
	}
	for _, want := range append(addrs, "connection refused", "imap.upstream.addresses") {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
}

func TestLoginCancelledWhileUpstreamHangs(t *testing.T) {
	addr := scripted(t) // accepts, never greets
	u, err := New(Options{Addresses: []string{addr}, Login: LoginPassthrough})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = u.Login(ctx, Request{User: "bob", Password: "pw"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > loginTimeout/2 { // the context's 200ms, not the 15s of its own
		t.Errorf("Login took %s after the context ended", d)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"fail/no-addresses", Options{Login: LoginPassthrough}, "imap.upstream.addresses"},
		{"fail/bad-address", Options{Addresses: []string{"nohost"}, Login: LoginPassthrough}, "not host:port"},
		{"fail/tls", Options{Addresses: []string{"a:1"}, Login: LoginPassthrough, TLS: "ssl"}, "imap.upstream.tls"},
		{"fail/login", Options{Addresses: []string{"a:1"}, Login: "xclient"}, "imap.upstream.login"},
		{"fail/master-without-password", Options{Addresses: []string{"a:1"}, MasterUser: "m"}, "master_password_file"},
		{"fail/style", Options{Addresses: []string{"a:1"}, Login: LoginPassthrough, MasterStyle: "x"}, "master_style"},
		{"fail/forward", Options{Addresses: []string{"a:1"}, Login: LoginPassthrough, ForwardClient: "xclient"}, "forward_client"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want mention of %q", err, tc.want)
			}
		})
	}
}

// TestAgainstGoIMAPServer logs in to go-imap's in-process server, which
// knows no ID command (so forward_client none) and speaks LOGIN.
func TestAgainstGoIMAPServer(t *testing.T) {
	mem := imapmemserver.New()
	user := imapmemserver.NewUser("carol", "carol pw \"x\"")
	if err := user.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	mem.AddUser(user)
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}},
		InsecureAuth: true,
		Logger:       slogPrinter{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	tests := []struct {
		name     string
		password string
		refused  bool
	}{
		{"ok/literal-password", "carol pw \"x\"", false},
		{"fail/wrong-password", "nope", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, err := New(Options{Addresses: []string{ln.Addr().String()}, Login: LoginPassthrough, ForwardClient: ForwardNone})
			if err != nil {
				t.Fatal(err)
			}
			conn, _, err := u.Login(context.Background(), Request{User: "carol", Password: tc.password})
			if tc.refused {
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("err = %v, want ErrRefused", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			defer conn.Close()
			io.WriteString(conn, "a SELECT INBOX\r\n")
			r := bufio.NewReader(conn)
			conn.SetReadDeadline(time.Now().Add(patience))
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("SELECT after login: %v", err)
				}
				if strings.HasPrefix(line, "a ") {
					if !strings.HasPrefix(line, "a OK") {
						t.Fatalf("SELECT: %q", line)
					}
					break
				}
			}
		})
	}
}

type slogPrinter struct{}

func (slogPrinter) Printf(string, ...any) {}

// An app-password login (no client password) in passthrough mode is a
// refusal, decided without dialling: the upstream cannot know the app
// password, and the client must get the uniform failure.
func TestPassthroughWithoutPasswordIsRefused(t *testing.T) {
	up, err := New(Options{Addresses: []string{"127.0.0.1:1"}, Login: LoginPassthrough})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = up.Login(context.Background(), Request{User: "alice"})
	var ue *UnavailableError
	if !errors.Is(err, ErrRefused) || errors.As(err, &ue) {
		t.Fatalf("Login = %v, want ErrRefused without dialling", err)
	}
}
