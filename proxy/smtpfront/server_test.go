package smtpfront_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/policytest"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// appSecret is alice's app password.
const appSecret = "abcdefghijklmnop"

// imapOnlySecret is alice's app password "phone" (id 8), scoped to IMAP
// only: SMTP refuses it.
const imapOnlySecret = "qrstuvwxyzabcdef"

// fakeDecider runs the real policy.Engine over a store where "alice" has
// app password appSecret (id 7) and MFA enforced; "down" makes the store
// fail; the secrets "primary", "upstream-refuses" and "upstream-flaky"
// are primary passwords of users without MFA; everything else is denied.
// It records attempts and outcomes, and the test fails if a Login is
// left unfinished.
type fakeDecider struct {
	mu          sync.Mutex
	trusted     netip.Prefix
	delay       time.Duration
	primary     []bool
	fails       int
	unavailable []error
	attempts    []policy.Attempt
	engines     *policytest.Engines
}

func newFakeDecider(t testing.TB) *fakeDecider {
	return &fakeDecider{engines: policytest.NewEngines(t)}
}

func (f *fakeDecider) state(user, secret string) (store.LoginState, error) {
	switch {
	case user == "down":
		return store.LoginState{}, errors.New("store down")
	case user == "alice" && secret == appSecret:
		return store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true, AppPassword: policytest.App(7, "alice", "Outlook")}, nil
	case user == "alice" && secret == imapOnlySecret:
		ap := policytest.App(8, "alice", "phone")
		ap.Scopes = []string{policy.IMAP.String()}
		return store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true, AppPassword: ap}, nil
	case secret == "primary" || secret == "upstream-refuses" || secret == "upstream-flaky":
		return store.LoginState{MFA: store.MFADisabled, AllowAppPasswords: true}, nil
	}
	return store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}, nil
}

func (f *fakeDecider) engine() *policy.Engine {
	f.mu.Lock()
	opts := policy.Options{Store: policytest.Store{State: f.state, OnRecord: f.record}, FailureDelay: policytest.Delay(f.delay), OnOutcome: f.outcome}
	if f.trusted.IsValid() {
		opts.TrustedNetworks = []netip.Prefix{f.trusted}
	}
	f.mu.Unlock()
	return f.engines.New(opts)
}

func (f *fakeDecider) record(ev store.AuditEvent) {
	if ev.Outcome != policy.Unavailable.String() {
		return
	}
	f.mu.Lock()
	f.unavailable = append(f.unavailable, errors.New(ev.Detail))
	f.mu.Unlock()
}

func (f *fakeDecider) outcome(_ policy.Proto, cred policy.Credential, o policy.Outcome) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if o != policy.Success {
		f.fails++
	}
	if cred == policy.Primary || (cred == policy.AppPassword && o == policy.Failure) {
		f.primary = append(f.primary, o == policy.Success)
	}
}

func (f *fakeDecider) Decide(ctx context.Context, a policy.Attempt) (*policy.Login, error) {
	f.mu.Lock()
	f.attempts = append(f.attempts, a)
	f.mu.Unlock()
	if a.Proto != policy.SMTP {
		return f.engine().Undecided(a, "wrong protocol"), fmt.Errorf("proto %q", a.Proto)
	}
	return f.engine().Decide(ctx, a)
}

func (f *fakeDecider) Undecided(a policy.Attempt, reason string) *policy.Login {
	return f.engine().Undecided(a, reason)
}

func (f *fakeDecider) PlaintextAllowed(c netip.AddrPort, tls bool) bool {
	return tls || (f.trusted.IsValid() && f.trusted.Contains(c.Addr()))
}

// fakeUpstream records what reaches the upstream. Like smtpupstream, a
// session whose Data reader fails closes itself and is unusable.
type fakeUpstream struct {
	mu       sync.Mutex
	down     bool
	dials    []netip.AddrPort
	logins   []smtpfront.LoginRequest
	log      []string
	messages [][]byte
	// dataStarted, when set, receives a value each time a Data call
	// starts reading.
	dataStarted chan struct{}
	// quitGate, when set, holds every Quit until it is closed.
	quitGate chan struct{}
}

func (f *fakeUpstream) Dial(_ context.Context, client netip.AddrPort) (smtpfront.PendingLogin, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials = append(f.dials, client)
	if f.down {
		return nil, errors.New("dial tcp 127.0.0.1:1: connection refused")
	}
	return &fakePending{f: f}, nil
}

type fakePending struct{ f *fakeUpstream }

func (p *fakePending) Login(_ context.Context, req smtpfront.LoginRequest) (smtpfront.UpstreamSession, error) {
	f := p.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logins = append(f.logins, req)
	switch req.Password {
	case "upstream-refuses":
		return nil, fmt.Errorf("535: %w", smtpfront.ErrLoginRefused)
	case "upstream-flaky":
		return nil, errors.New("read tcp: connection reset by peer")
	}
	return &fakeSession{f: f}, nil
}

func (p *fakePending) Close() error { p.f.record("CLOSE-PENDING"); return nil }

func (f *fakeUpstream) record(s string) {
	f.mu.Lock()
	f.log = append(f.log, s)
	f.mu.Unlock()
}

type fakeSession struct {
	f      *fakeUpstream
	closed bool // used from Data's goroutine and the others: the race detector checks smtpfront serialises them
}

var errClosedUpstream = errors.New("use of closed network connection")

func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.closed {
		return errClosedUpstream
	}
	if opts != nil && opts.Auth != nil {
		s.f.record("MAIL-AUTH " + *opts.Auth)
	}
	s.f.record("MAIL " + from)
	return nil
}

func (s *fakeSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.closed {
		return errClosedUpstream
	}
	s.f.record("RCPT " + to)
	if strings.HasPrefix(to, "unknown@") {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "<" + to + ">: Recipient address rejected: User unknown"}
	}
	if strings.HasPrefix(to, "later@") {
		return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try later"}
	}
	return nil
}

func (s *fakeSession) Data(r io.Reader) (int64, error) {
	if s.closed {
		return 0, errClosedUpstream
	}
	s.f.mu.Lock()
	started := s.f.dataStarted
	s.f.mu.Unlock()
	if started != nil {
		started <- struct{}{}
	}
	b, err := io.ReadAll(r)
	if err != nil {
		s.closed = true
		s.f.record("DATA-ABORTED")
		return int64(len(b)), err
	}
	s.f.mu.Lock()
	s.f.messages = append(s.f.messages, b)
	s.f.log = append(s.f.log, "DATA")
	s.f.mu.Unlock()
	return int64(len(b)), nil
}

func (s *fakeSession) Reset() error {
	if s.closed {
		return errClosedUpstream
	}
	s.f.record("RSET")
	return nil
}

func (s *fakeSession) Quit() error {
	if s.f.quitGate != nil {
		<-s.f.quitGate
	}
	if s.closed {
		return errClosedUpstream
	}
	s.closed = true
	s.f.record("QUIT")
	return nil
}

// Close may be called from another goroutine (to abort a message), so it
// touches only what is locked.
func (s *fakeSession) Close() error { s.f.record("CLOSE"); return nil }

type fixture struct {
	srv    *smtpfront.Server
	addr   string
	dec    *fakeDecider
	up     *fakeUpstream
	client *tls.Config
}

func newFixture(t *testing.T, mod func(*smtpfront.Options)) *fixture {
	t.Helper()
	certs, err := testenv.NewCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stls, err := certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dec: newFakeDecider(t), up: &fakeUpstream{}, client: certs.ClientTLS()}
	o := smtpfront.Options{Decider: f.dec, Upstream: f.up, TLSConfig: stls, Hostname: "mx.test"}
	if mod != nil {
		mod(&o)
	}
	f.srv = smtpfront.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := f.srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, smtpfront.ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(patience):
			t.Error("Serve did not return after Close")
		}
	})
	return f
}

// raw is a line-level client for checking exact bytes on the wire.
type raw struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (f *fixture) dialRaw(t *testing.T, startTLS bool) *raw {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(patience))
	r := &raw{t: t, conn: c, r: bufio.NewReader(c)}
	r.expect("220 ")
	if startTLS {
		r.send("EHLO client.test")
		r.reply()
		r.send("STARTTLS")
		r.expect("220 ")
		tc := tls.Client(c, f.client)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		r.conn, r.r = tc, bufio.NewReader(tc)
	}
	r.send("EHLO client.test")
	r.reply()
	return r
}

func (r *raw) send(line string) {
	r.t.Helper()
	if _, err := io.WriteString(r.conn, line+"\r\n"); err != nil {
		r.t.Fatal(err)
	}
}

// reply reads a whole (multi-line) reply.
func (r *raw) reply() string {
	r.t.Helper()
	var all []string
	for {
		l, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("read reply: %v (so far %q)", err, all)
		}
		all = append(all, l)
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(all, "")
		}
	}
}

func (r *raw) expect(prefix string) string {
	r.t.Helper()
	got := r.reply()
	if !strings.HasPrefix(got, prefix) {
		r.t.Fatalf("reply %q, want prefix %q", got, prefix)
	}
	return got
}

// login authenticates as alice with her app password.
func (r *raw) login() {
	r.t.Helper()
	r.send("AUTH PLAIN " + b64("\x00alice\x00"+appSecret))
	r.expect("235 ")
}

// envelope sends MAIL from alice and RCPT to bob, both accepted.
func (r *raw) envelope() {
	r.t.Helper()
	r.send("MAIL FROM:<alice@example.test>")
	r.expect("250 ")
	r.send("RCPT TO:<bob@example.test>")
	r.expect("250 ")
}

// startData sends the envelope and DATA, up to the 354.
func (r *raw) startData() {
	r.t.Helper()
	r.envelope()
	r.send("DATA")
	r.expect("354 ")
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const uniform535 = "535 5.7.8 Authentication credentials invalid\r\n"

func TestAuthLoginPromptsExact(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, true)
	r.send("AUTH LOGIN")
	if got := r.reply(); got != "334 VXNlcm5hbWU6\r\n" {
		t.Fatalf("first prompt %q", got)
	}
	r.send(b64("alice"))
	if got := r.reply(); got != "334 UGFzc3dvcmQ6\r\n" {
		t.Fatalf("second prompt %q", got)
	}
	r.send(b64(appSecret))
	r.expect("235 ")
	// EHLO again after AUTH (MailKit, Outlook) keeps the session.
	r.send("EHLO client.test")
	r.expect("250-")
	r.send("MAIL FROM:<alice@example.test>")
	r.expect("250 ")
}

func TestAuthMechanismsAndWire(t *testing.T) {
	tests := []struct {
		name   string
		script []string // client lines; "<" prefix: expected reply prefix
	}{
		{"login/initial-response", []string{"AUTH LOGIN " + b64("alice"), "<334 UGFzc3dvcmQ6", b64(appSecret), "<235 "}},
		{"plain/initial-response", []string{"AUTH PLAIN " + b64("\x00alice\x00"+appSecret), "<235 "}},
		{"plain/no-initial-response", []string{"AUTH PLAIN", "<334 ", b64("\x00alice\x00" + appSecret), "<235 "}},
		{"plain/authzid-same", []string{"AUTH PLAIN " + b64("alice\x00alice\x00"+appSecret), "<235 "}},
		{"mail-before-auth", []string{"MAIL FROM:<a@b>", "<530 5.7.0 Authentication required\r\n"}},
		{"xclient-refused", []string{"XCLIENT LOGIN=bob ADDR=10.0.0.1", "<501 5.5.2 Bad command"}},
		{"xclient-after-auth", []string{"AUTH PLAIN " + b64("\x00alice\x00"+appSecret), "<235 ", "XCLIENT LOGIN=bob", "<501 5.5.2", "MAIL FROM:<alice@example.test>", "<250 "}},
		{"mail-auth-param-dropped", []string{"AUTH PLAIN " + b64("\x00alice\x00"+appSecret), "<235 ", "MAIL FROM:<alice@example.test> AUTH=bob@example.test", "<250 "}},
		{"unknown-mechanism", []string{"AUTH CRAM-MD5", "<504 "}},
		{"cancel", []string{"AUTH LOGIN", "<334 ", "*", "<501 "}},
		// Not base64: a permanent syntax error (RFC 4954 §4), not the
		// temporary failure that makes a client try again.
		{"bad-base64-initial-response", []string{"AUTH PLAIN !!!!", "<501 5.5.2 Invalid base64 data\r\n"}},
		{"bad-base64-response", []string{"AUTH LOGIN", "<334 ", "!!!!", "<501 5.5.2 Invalid base64 data\r\n"}},
		{"decision-error", []string{"AUTH PLAIN " + b64("\x00down\x00x"), "<454 4.7.0 Temporary authentication failure\r\n"}},
		{"upstream-reply-passes", []string{"AUTH PLAIN " + b64("\x00alice\x00"+appSecret), "<235 ", "MAIL FROM:<alice@example.test>", "<250 ",
			"RCPT TO:<unknown@example.test>", "<550 5.1.1 <unknown@example.test>: Recipient address rejected: User unknown\r\n",
			"RCPT TO:<later@example.test>", "<450 4.2.0 try later\r\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := f.dialRaw(t, true)
			for _, l := range tc.script {
				if strings.HasPrefix(l, "<") {
					r.expect(l[1:])
					continue
				}
				r.send(l)
			}
			f.up.mu.Lock()
			defer f.up.mu.Unlock()
			for _, l := range f.up.log {
				if strings.Contains(l, "XCLIENT") || strings.Contains(l, "bob") || strings.HasPrefix(l, "MAIL-AUTH") {
					t.Fatalf("client command reached the upstream: %q", f.up.log)
				}
			}
		})
	}
}

func TestUniformFailure(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
	}{
		{"wrong-password", []string{"AUTH PLAIN " + b64("\x00alice\x00wrong")}},
		{"unknown-user", []string{"AUTH PLAIN " + b64("\x00nobody\x00wrong")}},
		{"login-wrong-password", []string{"AUTH LOGIN " + b64("alice"), b64("wrong")}},
		{"upstream-refused-primary", []string{"AUTH PLAIN " + b64("\x00bob\x00upstream-refuses")}},
		{"authzid-other-user", []string{"AUTH PLAIN " + b64("bob\x00alice\x00"+appSecret)}},
		{"malformed-plain", []string{"AUTH PLAIN " + b64("alice app")}},
		{"empty-password", []string{"AUTH LOGIN " + b64("alice"), "="}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := f.dialRaw(t, true)
			for i, l := range tc.lines {
				r.send(l)
				if i < len(tc.lines)-1 {
					r.expect("334 ")
				}
			}
			if got := r.reply(); got != uniform535 {
				t.Fatalf("reply %q, want %q", got, uniform535)
			}
			f.dec.mu.Lock()
			fails := f.dec.fails
			f.dec.mu.Unlock()
			if fails != 1 {
				t.Fatalf("Fail called %d times, want 1 (uniform delay)", fails)
			}
			// The connection is still usable: a second attempt succeeds.
			r.login()
		})
	}
}

func TestPrimaryPasswordGoesUpstream(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, true)
	r.send("AUTH PLAIN " + b64("\x00bob\x00primary"))
	r.expect("235 ")
	r.send("AUTH PLAIN " + b64("\x00alice\x00"+appSecret))
	r.expect("503 ")
	r.send("QUIT")
	r.expect("221 ")
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	if len(f.up.logins) != 1 || f.up.logins[0].Password != "primary" || f.up.logins[0].User != "bob" {
		t.Fatalf("logins %+v", f.up.logins)
	}
	f.dec.mu.Lock()
	defer f.dec.mu.Unlock()
	if len(f.dec.primary) != 1 || !f.dec.primary[0] {
		t.Fatalf("PrimaryResult %v", f.dec.primary)
	}
}

func TestAppPasswordSendsNoSecretUpstream(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, true)
	r.login()
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	l := f.up.logins[0]
	if l.Password != "" || l.User != "alice" || l.Helo != "client.test" || len(f.up.dials) != 1 || !f.up.dials[0].Addr().IsLoopback() {
		t.Fatalf("login request %+v after dials %v", l, f.up.dials)
	}
}

func TestUpstreamDownIsTemporary(t *testing.T) {
	f := newFixture(t, nil)
	f.up.down = true
	r := f.dialRaw(t, true)
	r.send("AUTH PLAIN " + b64("\x00alice\x00"+appSecret))
	if got := r.reply(); got != "454 4.7.0 Temporary authentication failure\r\n" {
		t.Fatalf("reply %q", got)
	}
}

func TestNoAuthBeforeTLS(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, false)
	r.send("EHLO client.test")
	ehlo := r.reply()
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS: %q", ehlo)
	}
	r.send("AUTH PLAIN " + b64("\x00alice\x00"+appSecret))
	r.expect("538 5.7.11 ")
	// The refusal is recorded (the decision's step 1 audits it), but no
	// credential goes with it: the exchange never started.
	f.dec.mu.Lock()
	defer f.dec.mu.Unlock()
	if len(f.dec.attempts) != 1 || f.dec.attempts[0].TLS || f.dec.attempts[0].User != "" || f.dec.attempts[0].Secret != "" {
		t.Fatalf("decision attempts %+v, want one without TLS and without a credential", f.dec.attempts)
	}
}

func TestTrustedPlaintext(t *testing.T) {
	f := newFixture(t, nil)
	f.dec.trusted = netip.MustParsePrefix("127.0.0.0/8")
	r := f.dialRaw(t, false)
	r.send("EHLO client.test")
	if ehlo := r.reply(); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("EHLO for a trusted client: %q", ehlo)
	}
	r.login()
}

// TestLegacyAuthLine: with the option, EHLO over TLS also offers the
// pre-RFC 2554 "AUTH=PLAIN LOGIN" line right after the standard one, and
// nothing else changes; without TLS neither line is offered.
func TestLegacyAuthLine(t *testing.T) {
	f := newFixture(t, func(o *smtpfront.Options) { o.LegacyAuthLine = true })
	r := f.dialRaw(t, false)
	r.send("EHLO client.test")
	if ehlo := r.reply(); strings.Contains(ehlo, "AUTH") {
		t.Fatalf("EHLO before TLS: %q", ehlo)
	}
	r = f.dialRaw(t, true)
	r.send("EHLO client.test")
	want := "250-Hello client.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n" +
		"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250-SIZE 52428800\r\n250 LIMITS RCPTMAX=100\r\n"
	if got := r.reply(); got != want {
		t.Fatalf("EHLO %q, want %q", got, want)
	}
	r.send("AUTH LOGIN " + b64("alice"))
	r.expect("334 UGFzc3dvcmQ6")
	r.send(b64(appSecret))
	r.expect("235 ")
}

func TestImplicitTLSWithGoSMTPClient(t *testing.T) {
	f := newFixture(t, func(o *smtpfront.Options) { o.ImplicitTLS = true })
	c, err := smtp.DialTLS(f.addr, f.client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient("alice", appSecret)); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"
	if err := c.SendMail("alice@example.test", []string{"bob@example.test"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	// The server sends 221 before it ends the upstream session.
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		f.up.mu.Lock()
		n := len(f.up.log)
		f.up.mu.Unlock()
		if n >= 4 {
			break
		}
	}
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	if len(f.up.messages) != 1 || string(f.up.messages[0]) != msg {
		t.Fatalf("upstream got %q", f.up.messages)
	}
	want := "MAIL alice@example.test,RCPT bob@example.test,DATA,QUIT"
	if got := strings.Join(f.up.log, ","); got != want {
		t.Fatalf("upstream saw %s, want %s", got, want)
	}
}

func TestLimits(t *testing.T) {
	// Every command before AUTH counts, those that passgate answers
	// itself too, and a STARTTLS refused under TLS: after MaxCommands
	// (EHLO included) the next gets 421 and the connection closes.
	for _, cmd := range []string{"MAIL FROM:<a@b>", "RSET", "NOOP", "VRFY alice", "HELP", "EXPN staff", "LHLO client.test", "STARTTLS"} {
		t.Run("commands-before-auth/"+strings.Fields(cmd)[0], func(t *testing.T) {
			f := newFixture(t, func(o *smtpfront.Options) { o.MaxCommands = 5 })
			r := f.dialRaw(t, true) // EHLO counts
			var replies []string
			for i := 0; i < 10; i++ {
				r.send(cmd)
				last := r.reply()
				replies = append(replies, last)
				if strings.HasPrefix(last, "421 ") {
					break
				}
			}
			// EHLO, STARTTLS and EHLO again count: the third gets 421.
			if len(replies) != 3 || !strings.HasPrefix(replies[2], "421 4.7.0") {
				t.Fatalf("replies %q, want the third (the sixth command with EHLO, STARTTLS, EHLO) to be 421", replies)
			}
			if _, err := r.r.ReadString('\n'); err == nil {
				t.Fatal("connection still open after 421")
			}
		})
	}
	t.Run("auth-failures", func(t *testing.T) {
		f := newFixture(t, func(o *smtpfront.Options) { o.MaxAuthFailures = 2 })
		r := f.dialRaw(t, true)
		for i := 0; i < 2; i++ {
			r.send("AUTH PLAIN " + b64("\x00alice\x00bad"))
			if got := r.reply(); got != uniform535 {
				t.Fatalf("reply %q", got)
			}
		}
		if _, err := r.r.ReadString('\n'); err == nil {
			t.Fatal("connection still open after the last allowed failure")
		}
	})
	t.Run("pre-login-time", func(t *testing.T) {
		f := newFixture(t, func(o *smtpfront.Options) { o.PreLoginTimeout = 300 * time.Millisecond })
		r := f.dialRaw(t, true)
		start := time.Now()
		got := r.reply() // nothing sent: the server gives up
		// The upper bound tells the option from the 60 s default.
		if !strings.HasPrefix(got, "421 ") || time.Since(start) > smtpfront.DefaultPreLoginTimeout/2 {
			t.Fatalf("reply %q after %v", got, time.Since(start))
		}
	})
	t.Run("line-length", func(t *testing.T) {
		f := newFixture(t, func(o *smtpfront.Options) { o.MaxLineLength = 1000 })
		r := f.dialRaw(t, true)
		r.send("NOOP " + strings.Repeat("x", 2000))
		r.expect("500 5.4.0 ")
	})
	t.Run("recipients-and-size", func(t *testing.T) {
		f := newFixture(t, func(o *smtpfront.Options) { o.MaxRecipients = 2; o.MaxMessageBytes = 1000 })
		r := f.dialRaw(t, true)
		r.send("EHLO client.test")
		if ehlo := r.reply(); !strings.Contains(ehlo, "SIZE 1000") {
			t.Fatalf("EHLO %q lacks SIZE 1000", ehlo)
		}
		r.login()
		r.send("MAIL FROM:<alice@example.test> SIZE=5000")
		r.expect("552 ")
		r.send("MAIL FROM:<alice@example.test>")
		r.expect("250 ")
		for _, rc := range []string{"a", "b"} {
			r.send("RCPT TO:<" + rc + "@example.test>")
			r.expect("250 ")
		}
		r.send("RCPT TO:<c@example.test>")
		r.expect("452 ")
		r.send("DATA")
		r.expect("354 ")
		r.send(strings.Repeat("y", 900))
		r.send(strings.Repeat("y", 900))
		r.send(".")
		r.expect("552 ")
		f.up.mu.Lock()
		defer f.up.mu.Unlock()
		if len(f.up.messages) != 0 {
			t.Fatal("an oversized message was committed upstream")
		}
	})
}

func TestShutdown(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, true)
	r.send("QUIT")
	r.expect("221 ")
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", f.addr, time.Second); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

func TestLogHasNoSecret(t *testing.T) {
	var buf syncBuffer
	f := newFixture(t, func(o *smtpfront.Options) { o.Logger = newTestLogger(&buf) })
	r := f.dialRaw(t, true)
	r.send("AUTH PLAIN " + b64("\x00alice\x00wrong-secret-xyz"))
	r.expect("535 ")
	r.send("AUTH LOGIN " + b64("alice"))
	r.expect("334 ")
	r.send(b64(appSecret))
	r.expect("235 ")
	r.send("QUIT")
	r.expect("221 ")
	deadline := time.Now().Add(patience)
	for !strings.Contains(buf.String(), `"msg":"smtp session"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	out := buf.String()
	if strings.Contains(out, "wrong-secret-xyz") || strings.Contains(out, appSecret) {
		t.Fatalf("a secret reached the log:\n%s", out)
	}
	for _, want := range []string{`"user":"alice"`, `"credential":"app-password:7 (Outlook)"`, `"outcome":"relayed"`, `"remote_addr":"127.0.0.1:`, `"proto":"smtp"`, `"conn_id":`, `"bytes_out":0`, `"ended":"client"`, `"duration":"`} {
		if !strings.Contains(out, want) {
			t.Errorf("session log lacks %s:\n%s", want, out)
		}
	}
}

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

// fakeSessions is a registry whose revoke cancels the tracked context.
type fakeSessions struct {
	mu     sync.Mutex
	cancel map[int64]context.CancelCauseFunc
}

var errRevoked = errors.New("revoked")

func (f *fakeSessions) Track(ctx context.Context, id int64) (context.Context, func()) {
	c, cancel := context.WithCancelCause(ctx)
	f.mu.Lock()
	f.cancel[id] = cancel
	f.mu.Unlock()
	return c, func() { cancel(nil) }
}

func TestRevokedAppPasswordClosesSession(t *testing.T) {
	reg := &fakeSessions{cancel: map[int64]context.CancelCauseFunc{}}
	f := newFixture(t, func(o *smtpfront.Options) { o.Sessions = reg })
	r := f.dialRaw(t, true)
	r.login()
	reg.mu.Lock()
	cancel := reg.cancel[7]
	reg.mu.Unlock()
	if cancel == nil {
		t.Fatal("the session was not tracked under app password 7")
	}
	cancel(errRevoked)
	_ = r.conn.SetReadDeadline(time.Now().Add(patience))
	if _, err := r.r.ReadString('\n'); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection not closed after revocation: %v", err)
	}
}

// TestFailedSessionLineNamesUserAndCredential: the session line of an SMTP
// session whose logins all failed names the user tried, and the app
// password that matched but was refused for lacking the smtp scope, with
// the keys every listener's session line has.
func TestFailedSessionLineNamesUserAndCredential(t *testing.T) {
	tests := []struct {
		name   string
		user   string
		secret string
		want   []string
	}{
		{"fail/app-password-out-of-scope", "alice", imapOnlySecret, []string{`"user":"alice"`, `"credential":"app-password:8 (phone)"`}},
		{"fail/wrong-secret", "bob", "wrong-secret", []string{`"user":"bob"`, `"credential":""`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncBuffer
			f := newFixture(t, func(o *smtpfront.Options) { o.Logger = newTestLogger(&buf) })
			r := f.dialRaw(t, true)
			r.send("AUTH PLAIN " + b64("\x00"+tc.user+"\x00"+tc.secret))
			r.expect("535 ")
			r.send("QUIT")
			r.expect("221 ")
			deadline := time.Now().Add(patience)
			for !strings.Contains(buf.String(), `"msg":"smtp session"`) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			var line string
			for _, l := range strings.Split(buf.String(), "\n") {
				if strings.Contains(l, `"msg":"smtp session"`) {
					line = l
				}
			}
			want := append(tc.want, `"outcome":"auth_failed"`, `"proto":"smtp"`, `"conn_id":`, `"remote_addr":"127.0.0.1:`,
				`"bytes_in":0`, `"bytes_out":0`, `"ended":"client"`, `"duration":"`)
			for _, w := range want {
				if !strings.Contains(line, w) {
					t.Errorf("session line lacks %s: %s", w, line)
				}
			}
		})
	}
}

// TestCutLineNotRun: a command line that the end of input cuts short is
// not run (go-smtp ran it: a MAIL cut in the middle of its address went
// upstream).
func TestCutLineNotRun(t *testing.T) {
	f := newFixture(t, nil)
	r := f.dialRaw(t, true)
	r.login()
	if _, err := io.WriteString(r.conn, "MAIL FROM:alice@exam"); err != nil {
		t.Fatal(err)
	}
	if cw, ok := r.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		f.up.mu.Lock()
		log := strings.Join(f.up.log, ",")
		f.up.mu.Unlock()
		if strings.Contains(log, "QUIT") || strings.Contains(log, "CLOSE") {
			if strings.Contains(log, "MAIL") {
				t.Fatalf("a cut command reached the upstream: %s", log)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the session did not end: %s", log)
		}
	}
}

// TestDataTimeout: a client that stalls inside DATA longer than the read
// timeout gets the message refused and the connection closed; nothing is
// committed, and what it sends after the stall is never read as
// commands (go-smtp read on after a timeout).
func TestDataTimeout(t *testing.T) {
	f := newFixture(t, func(o *smtpfront.Options) { o.ReadTimeout = 300 * time.Millisecond })
	r := f.dialRaw(t, true)
	r.login()
	r.startData()
	r.send("Subject: stalled")
	if got := r.reply() + r.reply(); got != "451 4.4.2 Error reading the message, try again later\r\n421 4.4.2 Idle timeout, bye bye\r\n" {
		t.Fatalf("replies %q", got)
	}
	if _, err := r.r.ReadString('\n'); err == nil {
		t.Fatal("connection still open after the timeout")
	}
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	if len(f.up.messages) != 0 {
		t.Fatalf("a stalled message was committed: %q", f.up.messages)
	}
}
