package imapfront

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/policytest"
)

// Credentials the fake decider knows.
const (
	appUser     = "alice"
	appSecret   = "abcd efgh ijkl mnop"
	appID       = 7
	primaryUser = "bob"
	primaryPass = "bob-primary-pw"
)

// fakeDecider runs the real policy.Engine over a store that knows alice
// (MFA enforced, app password appID), bob and ghost (no MFA); everyone
// else is enforced without an app password. It records the attempts and
// the outcomes, and the test fails if a Login is left unfinished.
type fakeDecider struct {
	delay   time.Duration
	trusted bool
	err     error // returned by the store when set

	engines *policytest.Engines

	mu           sync.Mutex
	attempts     []policy.Attempt
	primaries    []bool
	fails        int
	unavailables int
}

func newFakeDecider(t testing.TB) *fakeDecider {
	return &fakeDecider{engines: policytest.NewEngines(t)}
}

func (f *fakeDecider) state(user, secret string) (store.LoginState, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return store.LoginState{}, err
	}
	switch user {
	case appUser:
		ls := store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}
		if policytest.Normalize(secret) == policytest.Normalize(appSecret) {
			ls.AppPassword = policytest.App(appID, appUser, "phone")
		}
		return ls, nil
	case primaryUser, "ghost":
		return store.LoginState{MFA: store.MFADisabled, AllowAppPasswords: true}, nil
	}
	return store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}, nil
}

// engine is a fresh engine with the fake's current delay and trust.
func (f *fakeDecider) engine() *policy.Engine {
	f.mu.Lock()
	opts := policy.Options{Store: policytest.Store{State: f.state}, FailureDelay: policytest.Delay(f.delay), OnOutcome: f.outcome}
	if f.trusted {
		opts.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	f.mu.Unlock()
	return f.engines.New(opts)
}

func (f *fakeDecider) outcome(_ policy.Proto, cred policy.Credential, o policy.Outcome) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o != policy.Success {
		f.fails++
	}
	if o == policy.Unavailable {
		f.unavailables++
	}
	if cred == policy.Primary || (cred == policy.AppPassword && o == policy.Failure) {
		f.primaries = append(f.primaries, o == policy.Success)
	}
}

func (f *fakeDecider) Decide(ctx context.Context, a policy.Attempt) (*policy.Login, error) {
	f.mu.Lock()
	f.attempts = append(f.attempts, a)
	f.mu.Unlock()
	return f.engine().Decide(ctx, a)
}

func (f *fakeDecider) Undecided(a policy.Attempt, reason string) *policy.Login {
	return f.engine().Undecided(a, reason)
}

func (f *fakeDecider) PlaintextAllowed(client netip.AddrPort, tls bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return tls || f.trusted
}

// set changes the fake's behaviour while a server may be using it.
func (f *fakeDecider) set(fn func(*fakeDecider)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// set changes the fake's behaviour while a server may be using it.
func (f *fakeUpstream) set(fn func(*fakeUpstream)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeDecider) snapshot() (attempts []policy.Attempt, primaries []bool, fails int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]policy.Attempt(nil), f.attempts...), append([]bool(nil), f.primaries...), f.fails
}

// fakeUpstream logs in "bob" with primaryPass and anyone by master login,
// refuses "ghost", and answers every relayed command with a tagged OK that
// names the command.
type fakeUpstream struct {
	err    error  // returned by Login when set
	okText string // default "OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	extra  string // sent by the upstream right after its OK, before any command

	mu    sync.Mutex
	reqs  []LoginRequest
	lines []string // commands the upstream received after login
	wg    sync.WaitGroup
}

func (f *fakeUpstream) Login(ctx context.Context, req LoginRequest) (net.Conn, string, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	err, ok, extra := f.err, f.okText, f.extra
	f.mu.Unlock()
	if err != nil {
		return nil, "", err
	}
	if req.User == "ghost" || (req.Primary && string(req.Password) != primaryPass) {
		return nil, "", fmt.Errorf("fake upstream: NO [AUTHORIZATIONFAILED] secret-upstream-text: %w", ErrUpstreamRefused)
	}
	front, back := net.Pipe()
	f.wg.Add(1)
	go f.serve(back, extra)
	if ok == "" {
		ok = "OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	}
	return front, ok, nil
}

func (f *fakeUpstream) serve(c net.Conn, extra string) {
	defer f.wg.Done()
	defer c.Close()
	if extra != "" {
		if _, err := c.Write([]byte(extra)); err != nil {
			return
		}
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		f.mu.Lock()
		f.lines = append(f.lines, line)
		f.mu.Unlock()
		tag, rest, _ := strings.Cut(line, " ")
		name, _, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		reply := tag + " OK " + name + " done by upstream\r\n"
		switch name {
		case "LOGOUT":
			c.Write([]byte("* BYE upstream logging out\r\n" + reply))
			return
		case "CAPABILITY":
			reply = "* CAPABILITY IMAP4rev1 IDLE\r\n" + reply
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return
		}
	}
}

func (f *fakeUpstream) snapshot() ([]LoginRequest, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]LoginRequest(nil), f.reqs...), append([]string(nil), f.lines...)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testCerts makes a throwaway self-signed certificate for 127.0.0.1 and
// returns the server and client TLS configurations.
func testCerts(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	return server, client
}

// testServer is a running Server with its fakes.
type testServer struct {
	srv       *Server
	addr      string
	dec       *fakeDecider
	up        *fakeUpstream
	log       *syncBuffer
	clientTLS *tls.Config
	served    chan error
}

// startServer runs a Server on 127.0.0.1:0; mod may change the options.
// Cleanup closes it and checks that Serve returned ErrServerClosed.
func startServer(t testing.TB, mod func(*Options)) *testServer {
	t.Helper()
	serverTLS, clientTLS := testCerts(t)
	ts := &testServer{dec: newFakeDecider(t), up: &fakeUpstream{}, log: &syncBuffer{}, clientTLS: clientTLS, served: make(chan error, 1)}
	opts := Options{
		Decider:   ts.dec,
		Upstream:  ts.up,
		TLSConfig: serverTLS,
		Logger:    slog.New(slog.NewJSONHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&opts)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ts.srv = New(opts)
	go func() { ts.served <- ts.srv.Serve(ln) }()
	t.Cleanup(func() {
		ts.srv.Close()
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(patience):
			t.Error("Serve did not return after Close")
		}
		ts.up.wg.Wait()
		log := ts.log.String()
		for _, secret := range []string{primaryPass, appSecret, "abcdefghijklmnop", "secret-cleartext", b64("\x00" + primaryUser + "\x00" + primaryPass)} {
			if strings.Contains(log, secret) {
				t.Errorf("a secret (%.4s…) reached the log", secret)
			}
		}
	})
	return ts
}

// rawClient speaks IMAP by hand, byte for byte.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// dial connects and returns the client and the greeting line.
func (ts *testServer) dial(t testing.TB) (*rawClient, string) {
	t.Helper()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	return rc, rc.line()
}

// dialTLS connects with implicit TLS.
func (ts *testServer) dialTLS(t testing.TB) (*rawClient, string) {
	t.Helper()
	c, err := tls.Dial("tcp", ts.addr, ts.clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
	return rc, rc.line()
}

func (rc *rawClient) send(s string) {
	rc.t.Helper()
	if _, err := rc.c.Write([]byte(s)); err != nil {
		rc.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one line, without its CRLF.
func (rc *rawClient) line() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(patience))
	l, err := rc.br.ReadString('\n')
	if err != nil {
		rc.t.Fatalf("read line: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		rc.t.Fatalf("line %q does not end with CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads lines and fails unless they are exactly want.
func (rc *rawClient) expect(want ...string) {
	rc.t.Helper()
	for _, w := range want {
		if got := rc.line(); got != w {
			rc.t.Fatalf("got %q, want %q", got, w)
		}
	}
}

// expectClosed fails unless the server closes the connection without
// sending anything more.
// loginAfterID sends a client ID (whose fields the early upstream
// connection forwards), then login, and expects reply to it.
func (rc *rawClient) loginAfterID(login, reply string) {
	rc.t.Helper()
	rc.send(`i ID ("name" "Thunderbird")` + "\r\n")
	rc.expect(`* ID ("name" "passgate")`, "i OK ID completed")
	rc.send(login + "\r\n")
	rc.expect(reply)
}

func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(patience))
	b, err := rc.br.ReadString('\n')
	if err == nil || b != "" {
		rc.t.Fatalf("read %q, %v; want the connection closed", b, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		rc.t.Fatal("connection still open")
	}
}

// startTLS upgrades the client side after the server's OK.
func (rc *rawClient) startTLS(cfg *tls.Config) {
	rc.t.Helper()
	tc := tls.Client(rc.c, cfg)
	if err := tc.Handshake(); err != nil {
		rc.t.Fatalf("client handshake: %v", err)
	}
	rc.c = tc
	rc.br = bufio.NewReader(tc)
}

// patience bounds every wait for a state in these tests. It is generous on
// purpose: a busy machine under -race makes a test slower, never wrong.
const patience = time.Minute

// waitFor polls cond for up to patience.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
