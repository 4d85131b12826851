package ldapfront

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/passgate/passgate/backends/ldapwire"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/policytest"
	"github.com/passgate/passgate/proxy/revoke"
)

const (
	aliceDN  = "uid=alice,ou=people,dc=example,dc=test"
	wikiDN   = "cn=wiki,ou=services,dc=example,dc=test"
	alicePW  = "abcdefghijklmnop" // app password of alice
	wikiPW   = "wiki-primary"
	template = "uid={user},ou=people,dc=example,dc=test"
)

// fakeDecider runs the real policy.Engine over a store of three kinds of
// account: alice has MFA enforced and one app password (id 9); every
// other name (wiki's account, unknown users) has no MFA, so its password
// is allowed provisionally and left to the directory. block, when set,
// holds every Decide until it is closed. It counts the failures (not
// step 1's refusals, answered at once) and temporary failures from the
// audit events, and the test fails if a Login is left unfinished.
type fakeDecider struct {
	mu          sync.Mutex
	err         error
	fails       int
	unavailable int
	decided     []string
	trusted     bool
	block       chan struct{}
	engines     *policytest.Engines
}

func newFakeDecider(t testing.TB, trusted bool) *fakeDecider {
	return &fakeDecider{trusted: trusted, engines: policytest.NewEngines(t)}
}

func (f *fakeDecider) state(user, secret string) (store.LoginState, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return store.LoginState{}, err
	}
	if strings.EqualFold(user, "alice") {
		ls := store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}
		if secret == alicePW {
			ls.AppPassword = policytest.App(9, "alice", "directory")
		}
		return ls, nil
	}
	return store.LoginState{MFA: store.MFADisabled, AllowAppPasswords: true}, nil
}

func (f *fakeDecider) record(ev store.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ev.Outcome != policy.Success.String() && !strings.Contains(ev.Detail, "plaintext") {
		f.fails++
	}
	if ev.Outcome == policy.Unavailable.String() {
		f.unavailable++
	}
}

func (f *fakeDecider) engine() *policy.Engine {
	f.mu.Lock()
	opts := policy.Options{Store: policytest.Store{State: f.state, OnRecord: f.record}, FailureDelay: -1}
	if f.trusted {
		opts.TrustedNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	f.mu.Unlock()
	return f.engines.New(opts)
}

func (f *fakeDecider) Decide(ctx context.Context, a policy.Attempt) (*policy.Login, error) {
	f.mu.Lock()
	block := f.block
	f.decided = append(f.decided, a.User)
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	return f.engine().Decide(ctx, a)
}

func (f *fakeDecider) Undecided(a policy.Attempt, reason string) *policy.Login {
	return f.engine().Undecided(a, reason)
}

func (f *fakeDecider) decidedUsers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.decided...)
}

func (f *fakeDecider) counts() (fails, unavailable int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fails, f.unavailable
}

func (f *fakeDecider) PlaintextAllowed(_ netip.AddrPort, tls bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return tls || f.trusted
}

// alicePrimary is alice's primary password, which the fake directory
// accepts: passgate must never send it, MFA being enforced for her.
const alicePrimary = "alices-primary"

// fakeEntries are the fake directory's entries, keyed by every spelling
// it accepts for them (lower case), as slapd does: the userid alias and
// the OID of uid, fullwidth letters.
func fakeEntries() map[string]string {
	return map[string]string{
		strings.ToLower(aliceDN):                                       aliceDN,
		"userid=alice,ou=people,dc=example,dc=test":                    aliceDN,
		"0.9.2342.19200300.100.1.1=alice,ou=people,dc=example,dc=test": aliceDN,
		"uid=ａｌｉｃｅ,ou=people,dc=example,dc=test":                       aliceDN,
		wikiDN: wikiDN,
	}
}

// fakeUpstream is a directory that knows wiki's and alice's passwords
// and answers every search with one entry and a done, and every other
// request with compareTrue. The error fields make it unreachable.
type fakeUpstream struct {
	mu        sync.Mutex
	hold      bool
	sendGate  chan struct{} // when set, Send waits for it before returning
	sendEnter chan struct{} // when set, Send signals it on entry
	openErr   error
	verifyErr error
	noService bool
	sessions  []*fakeSession
	binds     []string // DNs a user password was sent for
	resolved  []string
}

func (u *fakeUpstream) Open(context.Context) (Session, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.openErr != nil {
		return nil, u.openErr
	}
	s := &fakeSession{up: u, held: map[int64]func([]byte, []byte, bool, error){}}
	u.sessions = append(u.sessions, s)
	return s, nil
}

// entry is the DN of the entry dn names, "" when none.
func (u *fakeUpstream) entry(dn string) string {
	return fakeEntries()[strings.ReplaceAll(strings.ToLower(dn), ", ", ",")]
}

func (u *fakeUpstream) checkPassword(dn string, pw []byte) bool {
	u.mu.Lock()
	u.binds = append(u.binds, dn)
	u.mu.Unlock()
	if dn == "" && len(pw) == 0 {
		return true // the directory allows anonymous binds
	}
	switch u.entry(dn) {
	case wikiDN:
		return string(pw) == wikiPW
	case aliceDN:
		return string(pw) == alicePrimary
	}
	return false
}

func (u *fakeUpstream) bindsSeen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.binds...)
}

func (u *fakeUpstream) Verify(_ context.Context, dn string, pw []byte) (string, bool, error) {
	u.mu.Lock()
	err := u.verifyErr
	u.mu.Unlock()
	if err != nil {
		return "", false, err
	}
	return "dn:" + u.entry(dn), u.checkPassword(dn, pw), nil
}

func (u *fakeUpstream) Resolve(_ context.Context, dn string) (string, bool, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.openErr != nil {
		return "", false, u.openErr
	}
	u.resolved = append(u.resolved, dn)
	e := u.entry(dn)
	return e, e != "", nil
}

func (u *fakeUpstream) HasServiceAccount() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return !u.noService
}

type sent struct {
	tag   int
	proxy string
}

type fakeSession struct {
	up        *fakeUpstream
	mu        sync.Mutex
	next      int64
	bound     string
	sent      []sent
	abandoned []int64
	held      map[int64]func([]byte, []byte, bool, error)
	onIdle    func()
}

// OnIdle keeps fn; the session calls it after each batch of answers, as
// the real one does before it waits for the directory.
func (s *fakeSession) OnIdle(fn func()) {
	s.mu.Lock()
	s.onIdle = fn
	s.mu.Unlock()
}

// idle calls the OnIdle function, as the real session's reader does when
// nothing more has arrived (tests call it after delivering held answers).
func (s *fakeSession) idle() {
	s.mu.Lock()
	fn := s.onIdle
	s.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (s *fakeSession) Bind(_ context.Context, dn string, pw []byte) (bool, error) {
	ok := s.up.checkPassword(dn, pw)
	s.mu.Lock()
	if ok {
		s.bound = dn
	}
	s.mu.Unlock()
	return ok, nil
}
func (s *fakeSession) BindService(context.Context) error {
	s.mu.Lock()
	s.bound = "service"
	s.mu.Unlock()
	return nil
}
func (s *fakeSession) Err() error { return nil }
func (s *fakeSession) Send(op, _ []byte, proxy string, fn func(op, controls []byte, last bool, err error)) (int64, error) {
	e, _, _ := ldapwire.NextElement(op)
	s.up.mu.Lock()
	hold, gate, enter := s.up.hold, s.up.sendGate, s.up.sendEnter
	s.up.mu.Unlock()
	if enter != nil {
		enter <- struct{}{}
	}
	if gate != nil {
		<-gate
	}
	s.mu.Lock()
	s.next++
	h := s.next
	s.sent = append(s.sent, sent{e.Tag, proxy})
	if hold {
		s.held[h] = fn
		s.mu.Unlock()
		return h, nil
	}
	s.mu.Unlock()
	go func() {
		if e.Tag == opSearchRequest {
			entry := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opSearchEntry, nil, "")
			entry.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, aliceDN, ""))
			entry.AppendChild(ber.NewSequence(""))
			fn(entry.Bytes(), nil, false, nil)
			fn(resultOp(opSearchDone, resultSuccess, ""), nil, true, nil)
			s.idle()
			return
		}
		tag, _ := responseTag(e.Tag)
		fn(resultOp(tag, 6, ""), nil, true, nil) // compareTrue
		s.idle()
	}()
	return h, nil
}
func (s *fakeSession) Abandon(h int64) error {
	s.mu.Lock()
	s.abandoned = append(s.abandoned, h)
	s.mu.Unlock()
	return nil
}
func (s *fakeSession) Close() error { return nil }

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

type testServer struct {
	srv  *Server
	addr string
	dec  *fakeDecider
	up   *fakeUpstream
	reg  *revoke.Registry
}

func startServer(t *testing.T, change func(*Options)) *testServer {
	t.Helper()
	return startServerOn(t, change, nil)
}

// startServerOn is startServer with the listener wrapped by wrap (nil:
// not wrapped), as cmd/passgate wraps it with proxy/connlimit.
func startServerOn(t *testing.T, change func(*Options), wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	return startServerWith(t, change, wrap, nil)
}

// startServerWith is startServerOn with prepare (if not nil) called on
// the Server before it serves, to set its test hooks.
func startServerWith(t *testing.T, change func(*Options), wrap func(net.Listener) net.Listener, prepare func(*Server)) *testServer {
	t.Helper()
	ts := &testServer{dec: newFakeDecider(t, true), up: &fakeUpstream{}, reg: revoke.NewRegistry()}
	opts := Options{Decider: ts.dec, Upstream: ts.up, Registry: ts.reg, UserDNTemplates: []string{template},
		UPNDomains: []string{"example.test"}, TLSConfig: selfSigned(t)}
	if change != nil {
		change(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if wrap != nil {
		ln = wrap(ln)
	}
	if prepare != nil {
		prepare(srv)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	ts.srv, ts.addr = srv, addr
	return ts
}

type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func (ts *testServer) dial(t *testing.T) *client {
	t.Helper()
	nc, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *client) send(msgs ...[]byte) {
	c.t.Helper()
	if _, err := c.nc.Write(bytes.Join(msgs, nil)); err != nil {
		c.t.Fatal(err)
	}
}

// recv reads one message; raw is its bytes.
func (c *client) recv() (message, []byte) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(patience))
	raw, err := ldapwire.ReadMessage(c.br, 1<<20)
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	m, err := ldapwire.ParseMessage(raw)
	if err != nil {
		c.t.Fatal(err)
	}
	return m, raw
}

// result returns the resultCode and diagnosticMessage of a response.
// startTLS asks for StartTLS with message id and, once it is granted,
// makes the client's connection TLS.
func (c *client) startTLS(t *testing.T, id int64) {
	t.Helper()
	c.send(encodeExtended(id, oidStartTLS))
	if m, _ := c.recv(); m.ID != id {
		t.Fatal("no StartTLS response")
	} else if code, _ := result(t, m); code != resultSuccess {
		t.Fatalf("StartTLS: %d", code)
	}
	tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.nc, c.br = tc, bufio.NewReader(tc)
}

func result(t *testing.T, m message) (int, string) {
	t.Helper()
	code, b, err := ldapwire.NextElement(m.Op.Content)
	if err != nil {
		t.Fatal(err)
	}
	_, b, _ = ldapwire.NextElement(b)
	diag, _, _ := ldapwire.NextElement(b)
	v, _ := ber.ParseInt64(code.Content)
	return int(v), string(diag.Content)
}

// TestDenyResponsesIdentical: whatever the reason, a refused bind gets the
// same bytes, after Fail.
func TestDenyResponsesIdentical(t *testing.T) {
	ts := startServer(t, nil)
	want := envelope(1, resultOp(opBindResponse, resultInvalidCredentials, failureMessage), nil)
	cases := []struct{ name, user, pw string }{
		{"fail/enforced-primary", aliceDN, "alices-primary"},
		{"fail/wrong-app-password", "alice@example.test", "zzzzzzzzzzzzzzzz"},
		{"fail/unknown-user", "uid=mallory,ou=people,dc=example,dc=test", "x"},
		{"fail/upn-of-unaccepted-domain", "alice@evil.test", alicePW},
		{"fail/unparsable-dn", "uid=alice,,=", alicePW},
		{"fail/primary-refused-by-directory", wikiDN, "wrong"},
		{"fail/password-without-name", "", "x"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.dial(t)
			c.send(encodeBind(1, tc.user, tc.pw))
			_, raw := c.recv()
			if !bytes.Equal(raw, want) {
				t.Fatalf("response %x, want %x", raw, want)
			}
			ts.dec.mu.Lock()
			fails := ts.dec.fails
			ts.dec.mu.Unlock()
			if fails != i+1 {
				t.Fatalf("Fail called %d times, want %d", fails, i+1)
			}
		})
	}
}

func TestBindResults(t *testing.T) {
	cases := []struct {
		name    string
		change  func(*Options, *fakeDecider)
		user    string
		pw      string
		code    int
		diagHas string
	}{
		{"ok/app-password", nil, aliceDN, alicePW, resultSuccess, ""},
		{"ok/primary-verified", nil, wikiDN, wikiPW, resultSuccess, ""},
		{"fail/plaintext-untrusted", func(o *Options, d *fakeDecider) { d.trusted = false }, aliceDN, alicePW, resultConfidentialityRequired, "TLS"},
		{"fail/anonymous", nil, "", "", resultUnwillingToPerform, "anonymous"},
		{"ok/anonymous-allowed", func(o *Options, d *fakeDecider) { o.AllowAnonymous = true }, "", "", resultSuccess, ""},
		{"fail/unauthenticated", nil, aliceDN, "", resultUnwillingToPerform, "unauthenticated"},
		{"ok/unauthenticated-allowed", func(o *Options, d *fakeDecider) { o.AllowUnauthenticated = true }, aliceDN, "", resultSuccess, ""},
		{"fail/decision-error", func(o *Options, d *fakeDecider) { d.err = errors.New("store down") }, aliceDN, alicePW, resultUnavailable, "try again"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dec := newFakeDecider(t, true)
			ts := startServer(t, func(o *Options) {
				o.Decider = dec
				if tc.change != nil {
					tc.change(o, dec)
				}
			})
			c := ts.dial(t)
			c.send(encodeBind(5, tc.user, tc.pw))
			m, _ := c.recv()
			code, diag := result(t, m)
			if m.ID != 5 || m.Op.Tag != opBindResponse || code != tc.code || !bytes.Contains([]byte(diag), []byte(tc.diagHas)) {
				t.Fatalf("id %d tag %d code %d %q, want 5 %d %d containing %q", m.ID, m.Op.Tag, code, diag, opBindResponse, tc.code, tc.diagHas)
			}
		})
	}
}

// TestPipelinedRequests: requests sent behind a bind before its response
// wait for it and are answered with their own message IDs.
func TestPipelinedRequests(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW), encodeSearch(2, aliceDN, nil), encodeSearch(3, aliceDN, nil),
		encodeExtended(4, oidWhoAmI), encodeSearch(5, aliceDN, nil))
	m, _ := c.recv()
	if code, _ := result(t, m); m.ID != 1 || code != resultSuccess {
		t.Fatalf("first response: id %d code %d, want the bind's success", m.ID, code)
	}
	entries, dones := map[int64]int{}, map[int64]int{}
	for len(dones) < 4 {
		m, _ := c.recv()
		switch m.Op.Tag {
		case opSearchEntry:
			entries[m.ID]++
		case opSearchDone:
			dones[m.ID]++
		case opExtendedResponse:
			dones[m.ID]++
			if m.ID != 4 {
				t.Fatalf("WhoAmI answered with id %d", m.ID)
			}
		}
	}
	for _, id := range []int64{2, 3, 5} {
		if entries[id] != 1 || dones[id] != 1 {
			t.Fatalf("search %d: %d entries, %d dones", id, entries[id], dones[id])
		}
	}
	s := ts.up.sessions[0]
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sent) != 3 {
		t.Fatalf("%d requests upstream, want 3", len(s.sent))
	}
	for _, x := range s.sent {
		if x.proxy != "dn:"+aliceDN || s.bound != "service" {
			t.Fatalf("relayed with proxy %q bound as %q", x.proxy, s.bound)
		}
	}
}

// TestAbandon: an abandoned request is abandoned upstream and its late
// answers are dropped; the connection goes on. The search is the first
// on the connection (sent by the executor, which binds the upstream
// session first) or follows one (sent by the reader itself, runInline).
func TestAbandon(t *testing.T) {
	for _, warm := range []bool{false, true} {
		t.Run(map[bool]string{false: "first-search", true: "after-a-search"}[warm], func(t *testing.T) {
			testAbandon(t, warm)
		})
	}
}

func testAbandon(t *testing.T, warm bool) {
	ts := startServer(t, nil)
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW))
	c.recv()
	first := int64(1) // the upstream handle of the held search
	if warm {
		c.send(encodeSearch(5, aliceDN, nil))
		for m, _ := c.recv(); m.Op.Tag != opSearchDone; m, _ = c.recv() {
		}
		first = 2
	}
	ts.up.mu.Lock()
	ts.up.hold = true
	ts.up.mu.Unlock()
	c.send(encodeSearch(2, aliceDN, nil))
	var s *fakeSession
	for deadline := time.Now().Add(patience); ; {
		ts.up.mu.Lock()
		if len(ts.up.sessions) > 0 {
			s = ts.up.sessions[0]
		}
		ts.up.mu.Unlock()
		if s != nil {
			s.mu.Lock()
			n := len(s.held)
			s.mu.Unlock()
			if n == 1 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("search never reached the upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.send(envelope(3, []byte{0x50, 0x01, 0x02}, nil)) // Abandon(2)
	for deadline := time.Now().Add(patience); ; {
		s.mu.Lock()
		n := len(s.abandoned)
		s.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("abandon never reached the upstream")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	fn := s.held[first]
	abandoned := s.abandoned
	s.mu.Unlock()
	if len(abandoned) != 1 || abandoned[0] != first {
		t.Fatalf("abandoned upstream: %v, want [%d]", abandoned, first)
	}
	fn(resultOp(opSearchDone, resultSuccess, ""), nil, true, nil) // too late: dropped
	c.send(encodeExtended(4, oidWhoAmI))
	m, _ := c.recv()
	if m.ID != 4 {
		t.Fatalf("got a response for %d after abandoning it", m.ID)
	}
}

func TestBindOnlyRefusesOperations(t *testing.T) {
	ts := startServer(t, func(o *Options) { o.Mode = ModeBindOnly })
	c := ts.dial(t)
	c.send(encodeBind(1, "alice@example.test", alicePW), encodeSearch(2, aliceDN, nil), encodeExtended(3, oidWhoAmI),
		encodeExtended(4, "1.3.6.1.4.1.4203.1.11.1"), encodeBind(5, wikiDN, wikiPW))
	want := []struct {
		id   int64
		code int
		diag string
	}{{1, resultSuccess, ""}, {2, resultUnwillingToPerform, msgBindOnly}, {3, resultSuccess, ""}, {4, resultUnwillingToPerform, msgBindOnly}, {5, resultSuccess, ""}}
	for _, w := range want {
		m, _ := c.recv()
		code, diag := result(t, m)
		if m.ID != w.id || code != w.code || diag != w.diag {
			t.Fatalf("id %d: code %d %q, want %d %d %q", m.ID, code, diag, w.id, w.code, w.diag)
		}
	}
	if len(ts.up.sessions) != 0 {
		t.Fatal("bind-only mode opened an upstream session")
	}
}

// TestStartTLS: a password bind is refused before StartTLS and accepted
// after it; a second StartTLS is refused.
func TestStartTLS(t *testing.T) {
	ts := startServer(t, func(o *Options) {})
	ts.dec.mu.Lock()
	ts.dec.trusted = false
	ts.dec.mu.Unlock()
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW))
	if m, _ := c.recv(); m.Op.Tag != opBindResponse {
		t.Fatal("no bind response")
	} else if code, _ := result(t, m); code != resultConfidentialityRequired {
		t.Fatalf("bind before TLS: %d", code)
	}
	c.startTLS(t, 2)
	c.send(encodeBind(3, aliceDN, alicePW), encodeExtended(4, oidStartTLS))
	if m, _ := c.recv(); m.ID != 3 {
		t.Fatal("no bind response")
	} else if code, _ := result(t, m); code != resultSuccess {
		t.Fatalf("bind after TLS: %d", code)
	}
	if m, _ := c.recv(); m.ID != 4 {
		t.Fatal("no second StartTLS response")
	} else if code, _ := result(t, m); code != resultOperationsError {
		t.Fatalf("second StartTLS: %d", code)
	}
}

// TestProtocolErrors: an oversized or malformed message gets a notice of
// disconnection and the connection is closed.
func TestProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"oversized", encodeBind(1, string(bytes.Repeat([]byte("a"), 200)), "x")},
		{"declares-2GiB", []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff}},
		{"malformed", []byte{0x30, 0x03, 0x02, 0x01, 0x01}},
		{"message-id-zero", encodeBind(0, "", "")},
		{"tls-on-plain-port", []byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(o *Options) { o.MaxMessageBytes = 128 })
			c := ts.dial(t)
			c.send(tc.in)
			m, _ := c.recv()
			code, _ := result(t, m)
			if m.ID != 0 || m.Op.Tag != opExtendedResponse || code != resultProtocolError {
				t.Fatalf("got id %d tag %d code %d, want a notice of disconnection with protocolError", m.ID, m.Op.Tag, code)
			}
			if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
				t.Fatalf("connection not closed: %v", err)
			}
		})
	}
}

// TestRevokeClosesConnection: deleting the app password (Registry.Revoke)
// closes the connection that bound with it.
func TestRevokeClosesConnection(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW))
	c.recv()
	if n := ts.reg.Revoke(9); n != 1 {
		t.Fatalf("Revoke closed %d sessions, want 1", n)
	}
	c.nc.SetReadDeadline(time.Now().Add(patience))
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("connection still open after revoke: %v", err)
	}
}

// TestShutdownDrainsAndNoGoroutineOutlivesClose.
func TestShutdownDrainsAndNoGoroutineOutlivesClose(t *testing.T) {
	before := runtime.NumGoroutine()
	dec := newFakeDecider(t, true)
	srv, err := New(Options{Decider: dec, Upstream: &fakeUpstream{}, UserDNTemplates: []string{template}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	var conns []net.Conn
	for i := 0; i < 5; i++ {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		nc.Write(encodeBind(1, aliceDN, alicePW))
		br := bufio.NewReader(nc)
		if _, err := ldapwire.ReadMessage(br, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown of idle connections: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	srv.Close()
	for _, nc := range conns {
		nc.Close()
	}
	deadline := time.Now().Add(patience)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNoSecretInLogs: with debug logging on, no password a client sends
// reaches the log, whatever happens to the bind.
func TestNoSecretInLogs(t *testing.T) {
	var buf syncBuffer
	ts := startServer(t, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	for _, b := range []struct{ user, pw string }{
		{aliceDN, alicePW}, {aliceDN, "wrong-secret-1234"}, {wikiDN, wikiPW}, {"alice@evil.test", "other-secret-5678"},
	} {
		c := ts.dial(t)
		c.send(encodeBind(1, b.user, b.pw), encodeSearch(2, aliceDN, nil))
		c.recv()
		c.nc.Close()
	}
	ts.srv.Close()
	out := buf.String()
	if !strings.Contains(out, "ldap session closed") {
		t.Fatalf("nothing logged: %q", out)
	}
	for _, secret := range []string{alicePW, "wrong-secret-1234", wikiPW, "other-secret-5678"} {
		if strings.Contains(out, secret) {
			t.Fatalf("log holds the secret %q:\n%s", secret, out)
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

// TestSessionLogLine: the one line per session names the user, the
// credential of the last successful bind, the bytes both ways and what
// ended it.
func TestSessionLogLine(t *testing.T) {
	var buf syncBuffer
	ts := startServer(t, func(o *Options) {
		o.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
	})
	c := ts.dial(t)
	bind := encodeBind(1, aliceDN, alicePW)
	c.send(bind)
	if m, _ := c.recv(); m.Op.Tag != opBindResponse {
		t.Fatalf("bind: tag %d", m.Op.Tag)
	}
	c.send([]byte{0x30, 0x05, 0x02, 0x01, 0x02, 0x42, 0x00}) // Unbind
	var line map[string]any
	for deadline := time.Now().Add(patience); line == nil; time.Sleep(10 * time.Millisecond) {
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, `"ldap session closed"`) && json.Unmarshal([]byte(l), &line) != nil {
				line = nil
			}
		}
		if line == nil && time.Now().After(deadline) {
			t.Fatalf("no session line in %v:\n%s", patience, buf.String())
		}
	}
	if line["user"] != "alice" || line["credential"] != "app-password:9" || line["ended"] != "client" || line["outcome"] != "relayed" || line["proto"] != "ldap" {
		t.Errorf("session line: %v", line)
	}
	if in, _ := line["bytes_in"].(float64); int(in) != len(bind)+7 {
		t.Errorf("bytes_in = %v, want %d (the bind and the unbind)", line["bytes_in"], len(bind)+7)
	}
	if out, _ := line["bytes_out"].(float64); out <= 0 {
		t.Errorf("bytes_out = %v, want the bind response", line["bytes_out"])
	}
}

// countingListener counts the writes to the connections it accepts.
type countingListener struct {
	net.Listener
	writes *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{nc, l.writes}, nil
}

type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// heldSearch binds alice, sends a search that the fake directory holds,
// and returns the session and the search's handler.
func heldSearch(t *testing.T, ts *testServer, c *client) (*fakeSession, func([]byte, []byte, bool, error)) {
	t.Helper()
	ts.up.mu.Lock()
	ts.up.hold = true
	ts.up.mu.Unlock()
	c.send(encodeBind(1, aliceDN, alicePW))
	c.recv()
	c.send(encodeSearch(2, aliceDN, nil))
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		ts.up.mu.Lock()
		var s *fakeSession
		if len(ts.up.sessions) > 0 {
			s = ts.up.sessions[0]
		}
		ts.up.mu.Unlock()
		if s != nil {
			s.mu.Lock()
			fn := s.held[1]
			s.mu.Unlock()
			if fn != nil {
				return s, fn
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("search never reached the upstream")
		}
	}
}

func searchEntry() []byte {
	entry := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opSearchEntry, nil, "")
	entry.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, aliceDN, ""))
	entry.AppendChild(ber.NewSequence(""))
	return entry.Bytes()
}

// TestEntryWithoutResultFlows: a search entry is held back to go out
// with what else the directory sent with it, but only until the session
// waits for the directory: an entry whose result does not follow (a slow
// search, a stream of entries) still reaches the client, before the
// result and in order.
func TestEntryWithoutResultFlows(t *testing.T) {
	ts := startServer(t, nil)
	c := ts.dial(t)
	s, fn := heldSearch(t, ts, c)
	fn(searchEntry(), nil, false, nil)
	s.idle()
	if m, _ := c.recv(); m.ID != 2 || m.Op.Tag != opSearchEntry {
		t.Fatalf("first answer: id %d tag %d, want search 2's entry", m.ID, m.Op.Tag)
	}
	for range 3 { // a burst of entries, then the result
		fn(searchEntry(), nil, false, nil)
	}
	fn(resultOp(opSearchDone, resultSuccess, ""), nil, true, nil)
	s.idle()
	for i := range 4 {
		m, _ := c.recv()
		want := opSearchEntry
		if i == 3 {
			want = opSearchDone
		}
		if m.ID != 2 || m.Op.Tag != want {
			t.Fatalf("answer %d: id %d tag %d, want %d", i+2, m.ID, m.Op.Tag, want)
		}
	}
}

// TestHeldAnswersOneWrite: what the session hands over between two idle
// calls (entries and the result of one read from the directory) reaches
// the client in one write; past maxHeldBytes, held answers are written
// without waiting for idle.
func TestHeldAnswersOneWrite(t *testing.T) {
	tests := []struct {
		name       string
		entries    int
		entryBytes int
		wantWrites int64 // before idle is called
	}{
		{"ok/entry-and-result", 1, 0, 0},
		{"ok/burst", 5, 0, 0},
		{"ok/over-the-cap", 3, maxHeldBytes / 2, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			var writes atomic.Int64
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go ts.srv.Serve(countingListener{ln, &writes})
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { nc.Close() })
			c := &client{t: t, nc: nc, br: bufio.NewReader(nc)}
			s, fn := heldSearch(t, ts, c)
			entry := searchEntry()
			if tc.entryBytes > 0 {
				big := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opSearchEntry, nil, "")
				big.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, strings.Repeat("x", tc.entryBytes), ""))
				big.AppendChild(ber.NewSequence(""))
				entry = big.Bytes()
			}
			before := writes.Load()
			for range tc.entries {
				fn(entry, nil, false, nil)
			}
			fn(resultOp(opSearchDone, resultSuccess, ""), nil, true, nil)
			if got := writes.Load() - before; got != tc.wantWrites {
				t.Fatalf("%d writes before the session went idle, want %d", got, tc.wantWrites)
			}
			s.idle()
			if got := writes.Load() - before; got != tc.wantWrites+1 {
				t.Fatalf("%d writes after the session went idle, want %d", got, tc.wantWrites+1)
			}
			for i := 0; i <= tc.entries; i++ {
				m, _ := c.recv()
				want := opSearchEntry
				if i == tc.entries {
					want = opSearchDone
				}
				if m.ID != 2 || m.Op.Tag != want {
					t.Fatalf("answer %d: id %d tag %d, want %d", i, m.ID, m.Op.Tag, want)
				}
			}
		})
	}
}

// loginListener accepts connections that offer their socket's RawConn
// and count LoggedIn calls, as proxy/connlimit's do.
type loginListener struct {
	net.Listener
	logins *atomic.Int64
}

func (l loginListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &loginConn{nc, l.logins}, nil
}

type loginConn struct {
	net.Conn
	logins *atomic.Int64
}

func (c *loginConn) LoggedIn() { c.logins.Add(1) }

func (c *loginConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

// TestLoggedInReachesListenerConn: the listener reads and writes the
// accepted socket through a sockwire.Socket, and a successful bind
// still tells the listener's connection (proxy/connlimit's LoggedIn),
// before and after StartTLS; a failed bind does not.
func TestLoggedInReachesListenerConn(t *testing.T) {
	for _, tc := range []struct {
		name     string
		startTLS bool
		pw       string
		logins   int64
	}{
		{"plain", false, alicePW, 1},
		{"starttls", true, alicePW, 1},
		{"failed-bind", false, "wrong", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logins atomic.Int64
			ts := startServerOn(t, nil, func(ln net.Listener) net.Listener { return loginListener{ln, &logins} })
			c := ts.dial(t)
			if tc.startTLS {
				c.send(encodeExtended(1, oidStartTLS))
				if m, _ := c.recv(); m.ID != 1 {
					t.Fatalf("StartTLS answered with ID %d", m.ID)
				}
				tc := tls.Client(c.nc, &tls.Config{InsecureSkipVerify: true})
				c.nc, c.br = tc, bufio.NewReader(tc)
			}
			c.send(encodeBind(2, aliceDN, tc.pw))
			m, _ := c.recv()
			if code, _ := result(t, m); (code == resultSuccess) != (tc.logins == 1) {
				t.Fatalf("bind result %d", code)
			}
			if n := logins.Load(); n != tc.logins {
				t.Fatalf("LoggedIn called %d times, want %d", n, tc.logins)
			}
		})
	}
}

// TestIdleConnectionsHoldNoReadBuffer: a plaintext connection that waits
// for its client's next message has given its read buffer back to the
// server's pool, takes one again when the message comes, and answers it;
// a connection that reads over TLS keeps its buffer (TLS may hold bytes
// read ahead, which a wait on the socket would not see). Every buffer is
// back once the connections are gone.
func TestIdleConnectionsHoldNoReadBuffer(t *testing.T) {
	ts := startServer(t, nil)
	lent := func() int64 { return ts.srv.lent.Load() }
	idle := func() bool { return lent() == 0 && ts.srv.executors.Load() == 0 }
	var clients []*client
	for range 5 {
		code, c := ts.bindCode(t, 1, aliceDN, alicePW)
		if code != resultSuccess {
			t.Fatalf("bind: %d", code)
		}
		clients = append(clients, c)
	}
	waitFor(t, "the idle connections to give their read buffers back and end their executors", idle)
	for i, c := range clients {
		c.send(encodeExtended(2, oidWhoAmI))
		if m, _ := c.recv(); m.ID != 2 {
			t.Fatalf("connection %d: no WhoAmI response after waiting without a buffer", i)
		} else if code, _ := result(t, m); code != resultSuccess {
			t.Fatalf("connection %d: WhoAmI: %d", i, code)
		}
	}
	waitFor(t, "the connections to give their read buffers back and end their executors after answering", idle)

	tc := clients[0]
	tc.startTLS(t, 3)
	tc.send(encodeExtended(4, oidWhoAmI))
	if m, _ := tc.recv(); m.ID != 4 {
		t.Fatal("no WhoAmI response over TLS")
	}
	waitFor(t, "one read buffer, the TLS connection's", func() bool { return lent() == 1 })

	for _, c := range clients {
		c.nc.Close()
	}
	waitFor(t, "every read buffer back once the connections are gone", func() bool { return lent() == 0 })
}

// TestExecutorComesAndGoes: the executor ends whenever its queue is
// empty and the reader starts it again with the next request, so a
// request that arrives while the last one ends must find one running.
// Several clients send bursts of 1 to 5 pipelined WhoAmI requests (run
// by the executor), each burst as soon as the one before is answered;
// every request is answered, in order, and no executor is left once the
// clients are idle. The window in which an executor ends is nanoseconds
// wide, far shorter than a round trip: the server's hook holds each
// executor in it, after it has found nothing left and before it lets go,
// until the client's next request is counted, so that every burst but
// the first comes in during an ending (an executor that forgot its
// second look would leave it unanswered).
func TestExecutorComesAndGoes(t *testing.T) {
	var held atomic.Int64 // endings that saw the next request come in
	ts := startServerWith(t, nil, nil, func(s *Server) {
		s.executorEnding = func(c *conn) {
			for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end) && c.ctx.Err() == nil; runtime.Gosched() {
				if c.unfinished.Load() > 0 {
					held.Add(1)
					return
				}
			}
		}
	})
	const clients, bursts = 6, 150
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		code, c := ts.bindCode(t, 1, aliceDN, alicePW)
		if code != resultSuccess {
			t.Fatalf("bind: %d", code)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := int64(2)
			for b := range bursts {
				n := 1 + b%5
				var msgs [][]byte
				for i := range n {
					msgs = append(msgs, encodeExtended(id+int64(i), oidWhoAmI))
				}
				if _, err := c.nc.Write(bytes.Join(msgs, nil)); err != nil {
					errs <- err
					return
				}
				for i := range n {
					c.nc.SetReadDeadline(time.Now().Add(patience))
					raw, err := ldapwire.ReadMessage(c.br, 1<<20)
					if err != nil {
						errs <- fmt.Errorf("burst %d, request %d of %d: %w", b, i+1, n, err)
						return
					}
					m, err := ldapwire.ParseMessage(raw)
					if err != nil || m.ID != id+int64(i) || m.Op.Tag != opExtendedResponse {
						errs <- fmt.Errorf("burst %d: got id %d tag %d (%v), want the WhoAmI response %d", b, m.ID, m.Op.Tag, err, id+int64(i))
						return
					}
				}
				id += int64(n)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "no executor once the clients are idle", func() bool { return ts.srv.executors.Load() == 0 })
	// Each client's bursts after its first came in during an ending
	// (a few may miss it on a machine slow enough to take 200 ms).
	if n := held.Load(); n < clients*(bursts-1)/2 {
		t.Errorf("only %d of %d bursts came in while an executor was ending: the test did not test that", n, clients*(bursts-1))
	}
}

// TestIdleTimeoutWhileWaitingWithoutBuffer: a bound connection that waits
// for its client without a read buffer is still closed by IdleTimeout,
// not before it (the pre-bind timeout, here longer than the test's
// patience, no longer applies once the bind has succeeded).
func TestIdleTimeoutWhileWaitingWithoutBuffer(t *testing.T) {
	const idle = 600 * time.Millisecond
	ts := startServer(t, func(o *Options) {
		o.IdleTimeout = idle
		o.PreBindTimeout = 2 * patience
	})
	code, c := ts.bindCode(t, 1, aliceDN, alicePW)
	if code != resultSuccess {
		t.Fatalf("bind: %d", code)
	}
	bound := time.Now()
	waitFor(t, "the idle connection to give its read buffer back", func() bool { return ts.srv.lent.Load() == 0 })
	c.nc.SetReadDeadline(time.Now().Add(patience))
	var b [1]byte
	if _, err := c.nc.Read(b[:]); err == nil {
		// A notice of disconnection may come first; then the close.
		io.Copy(io.Discard, c.nc)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("still open %v after the bind, with an idle timeout of %v", patience, idle)
	}
	if d := time.Since(bound); d < idle/2 {
		t.Fatalf("closed %v after the bind, want not before the idle timeout of %v", d, idle)
	}
}
