package ldapfront

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/ldapwire"
)

// whoAmI asks WhoAmI on c and returns the answer.
func (c *client) whoAmI(id int64) string {
	c.t.Helper()
	c.send(encodeExtended(id, oidWhoAmI))
	m, _ := c.recv()
	if m.ID != id || m.Op.Tag != opExtendedResponse {
		c.t.Fatalf("WhoAmI: got id %d tag %d", m.ID, m.Op.Tag)
	}
	b := m.Op.Content
	for i := 0; len(b) > 0; i++ {
		e, rest, err := ldapwire.NextElement(b)
		if err != nil {
			c.t.Fatal(err)
		}
		if i >= 3 && e.Class == classContext && e.Tag == 11 {
			return string(e.Content)
		}
		b = rest
	}
	return ""
}

// holdDecisions makes every decision wait until release is called.
func (ts *testServer) holdDecisions() (release func()) {
	block := make(chan struct{})
	ts.dec.mu.Lock()
	ts.dec.block = block
	ts.dec.mu.Unlock()
	return sync.OnceFunc(func() { close(block) })
}

// bindCode binds on a new connection and returns the result code.
func (ts *testServer) bindCode(t *testing.T, id int64, name, pw string) (int, *client) {
	t.Helper()
	c := ts.dial(t)
	c.send(encodeBind(id, name, pw))
	m, _ := c.recv()
	if m.ID != id || m.Op.Tag != opBindResponse {
		t.Fatalf("bind: got id %d tag %d", m.ID, m.Op.Tag)
	}
	code, _ := result(t, m)
	return code, c
}

// TestOtherSpellingsAreResolvedBeforeBinding: a DN that names alice's
// entry in another way than the template (an OID or alias attribute
// type, fullwidth letters) is resolved with the service account first, so
// that alice (MFA enforced) is decided on and her primary password never
// reaches the directory; her app password works under any spelling, and
// acts as her canonical entry.
func TestOtherSpellingsAreResolvedBeforeBinding(t *testing.T) {
	spellings := []string{
		"0.9.2342.19200300.100.1.1=alice,ou=people,dc=example,dc=test",
		"userid=alice,ou=people,dc=example,dc=test",
		"uid=ＡＬＩＣＥ,ou=people,dc=example,dc=test",
		"ＡＬＩＣＥ@example.test",
	}
	for _, modeName := range []string{"relay", "bind-only"} {
		for _, name := range spellings {
			t.Run(modeName+"/"+name, func(t *testing.T) {
				ts := startServer(t, func(o *Options) {
					if modeName == "bind-only" {
						o.Mode = ModeBindOnly
					}
				})
				if code, _ := ts.bindCode(t, 1, name, alicePrimary); code != resultInvalidCredentials {
					t.Fatalf("primary password of an enforced user under %q: code %d, want 49", name, code)
				}
				if got := ts.up.bindsSeen(); len(got) != 0 {
					t.Fatalf("the directory saw a bind with alice's primary password as %q", got)
				}
				if got := ts.dec.decidedUsers(); !slices.Equal(got, []string{"alice"}) {
					t.Fatalf("decided for %q, want [alice]", got)
				}
				code, c := ts.bindCode(t, 2, name, alicePW)
				if code != resultSuccess {
					t.Fatalf("app password under %q: code %d", name, code)
				}
				if who := c.whoAmI(3); who != "dn:"+aliceDN {
					t.Fatalf("WhoAmI after app-password bind as %q = %q, want dn:%s", name, who, aliceDN)
				}
			})
		}
	}
}

// TestResolveRefusals: a name not in template form that names no entry,
// or any such name without a service account, fails like a wrong password
// without a decision and without a bind; application accounts (not in a
// template) resolve to themselves and are verified by the directory.
func TestResolveRefusals(t *testing.T) {
	cases := []struct {
		name      string
		noService bool
		user, pw  string
		code      int
		decided   []string
		binds     []string
	}{
		{"fail/no-such-entry", false, "userid=nobody,ou=people,dc=example,dc=test", "x", resultInvalidCredentials, nil, nil},
		{"fail/non-dn-name-without-entry", false, "ｂｏｂ", "x", resultInvalidCredentials, nil, nil},
		{"fail/no-service-account-alias", true, "userid=alice,ou=people,dc=example,dc=test", alicePW, resultInvalidCredentials, nil, nil},
		{"fail/no-service-account-app-account", true, wikiDN, wikiPW, resultInvalidCredentials, nil, nil},
		{"ok/no-service-account-plain-template", true, aliceDN, alicePW, resultSuccess, []string{"alice"}, nil},
		{"ok/app-account", false, "CN=Wiki, OU=Services, DC=Example, DC=Test", wikiPW, resultSuccess, []string{wikiDN}, []string{wikiDN}},
		{"fail/app-account-wrong-password", false, wikiDN, "wrong", resultInvalidCredentials, []string{wikiDN}, []string{wikiDN}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(o *Options) { o.Mode = ModeBindOnly })
			ts.up.noService = tc.noService
			if code, _ := ts.bindCode(t, 1, tc.user, tc.pw); code != tc.code {
				t.Fatalf("code %d, want %d", code, tc.code)
			}
			if got := ts.dec.decidedUsers(); !slices.Equal(got, tc.decided) {
				t.Fatalf("decided for %q, want %q", got, tc.decided)
			}
			if got := ts.up.bindsSeen(); !slices.Equal(got, tc.binds) {
				t.Fatalf("directory binds %q, want %q", got, tc.binds)
			}
			if fails, _ := ts.dec.counts(); (tc.code == resultInvalidCredentials) != (fails == 1) {
				t.Fatalf("Fail called %d times", fails)
			}
		})
	}
}

// TestAppPasswordIdentityIsCanonical: after an app-password bind the
// identity is the decision's user in the first template, whatever case or
// escapes the client used; a name of another template is refused.
func TestAppPasswordIdentityIsCanonical(t *testing.T) {
	ts := startServer(t, func(o *Options) {
		o.UserDNTemplates = []string{template, "cn={user},ou=staff,dc=example,dc=test"}
	})
	for _, name := range []string{"UID=Alice, OU=People, DC=Example, DC=Test", `uid=\41lice,ou=people,dc=example,dc=test`, "ALICE@example.test"} {
		code, c := ts.bindCode(t, 1, name, alicePW)
		if code != resultSuccess {
			t.Fatalf("%q: code %d", name, code)
		}
		if who := c.whoAmI(2); who != "dn:"+aliceDN {
			t.Fatalf("WhoAmI after bind as %q = %q, want dn:%s", name, who, aliceDN)
		}
		c.send(encodeSearch(3, aliceDN, nil))
		for {
			m, _ := c.recv()
			if m.Op.Tag == opSearchDone {
				break
			}
		}
	}
	for _, s := range ts.up.sessions {
		s.mu.Lock()
		for _, x := range s.sent {
			if x.proxy != "dn:"+aliceDN {
				t.Errorf("relayed as %q, want dn:%s", x.proxy, aliceDN)
			}
		}
		s.mu.Unlock()
	}
	if code, _ := ts.bindCode(t, 1, "cn=alice,ou=staff,dc=example,dc=test", alicePW); code != resultInvalidCredentials {
		t.Fatalf("app password with the second template: code %d, want 49", code)
	}
}

// TestTemporaryFailureTellsNothing: when the directory or the decision
// cannot be reached, every bind gets unavailable after Fail and is
// recorded with Unavailable, whatever the secret and the user's MFA state;
// in relay mode the decision is not even asked.
func TestTemporaryFailureTellsNothing(t *testing.T) {
	down := errors.New("directory down")
	cases := []struct {
		name       string
		mode       Mode
		setup      func(*fakeUpstream, *fakeDecider)
		user, pw   string
		wantDecide bool
	}{
		{"relay/enforced-wrong-password", ModeRelay, func(u *fakeUpstream, _ *fakeDecider) { u.openErr = down }, aliceDN, "wrong", false},
		{"relay/enforced-app-password", ModeRelay, func(u *fakeUpstream, _ *fakeDecider) { u.openErr = down }, aliceDN, alicePW, false},
		{"relay/no-mfa-any-password", ModeRelay, func(u *fakeUpstream, _ *fakeDecider) { u.openErr = down }, "uid=bob,ou=people,dc=example,dc=test", "anything", false},
		{"bind-only/resolve-fails", ModeBindOnly, func(u *fakeUpstream, _ *fakeDecider) { u.openErr = down }, wikiDN, wikiPW, false},
		{"bind-only/verify-fails", ModeBindOnly, func(u *fakeUpstream, _ *fakeDecider) { u.verifyErr = down }, "uid=bob,ou=people,dc=example,dc=test", "anything", true},
		{"decision-fails", ModeRelay, func(_ *fakeUpstream, d *fakeDecider) { d.err = down }, aliceDN, "wrong", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(o *Options) { o.Mode = tc.mode })
			tc.setup(ts.up, ts.dec)
			if code, _ := ts.bindCode(t, 1, tc.user, tc.pw); code != resultUnavailable {
				t.Fatalf("code %d, want unavailable (52)", code)
			}
			fails, unavailable := ts.dec.counts()
			if fails != 1 || unavailable != 1 {
				t.Fatalf("Fail %d, Unavailable %d times; want 1 and 1", fails, unavailable)
			}
			if decided := len(ts.dec.decidedUsers()) > 0; decided != tc.wantDecide {
				t.Fatalf("decision asked: %v, want %v", decided, tc.wantDecide)
			}
		})
	}
}

// TestPreBindTimeoutIsAbsolute: a client that never binds is closed
// PreBindTimeout after it connected, however often it sends something.
func TestPreBindTimeoutIsAbsolute(t *testing.T) {
	ts := startServer(t, func(o *Options) { o.PreBindTimeout = 400 * time.Millisecond })
	c := ts.dial(t)
	start := time.Now()
	// The client speaks every 100ms, well within the timeout: a timeout
	// that each message renewed would keep the connection open. How late
	// after 400ms it closes is up to the machine's load; the only upper
	// bound tells the option from the 60s default.
	for i := int64(1); ; i++ {
		if time.Since(start) > DefaultPreBindTimeout/2 {
			t.Fatalf("connection still open %v after connecting with a pre-bind timeout of 400ms", DefaultPreBindTimeout/2)
		}
		if _, err := c.nc.Write(encodeExtended(i, oidWhoAmI)); err != nil {
			break
		}
		c.nc.SetReadDeadline(time.Now().Add(patience))
		if _, err := ldapwire.ReadMessage(c.br, 1<<20); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("no answer to WhoAmI %d in %v, and the connection is still open", i, patience)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("closed after %v, want not before 400ms", d)
	}
}

// TestPreBindMessageCap: before a bind succeeds a message may be at most
// 64 KiB; after it, up to MaxMessageBytes.
func TestPreBindMessageCap(t *testing.T) {
	big := strings.Repeat("a", 100<<10)
	cases := []struct {
		name     string
		bindPW   string
		wantDone bool
	}{
		{"fail/100KiB-before-bind", "", false},
		{"ok/100KiB-after-bind", alicePW, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			c := ts.dial(t)
			if tc.bindPW != "" {
				c.send(encodeBind(1, aliceDN, tc.bindPW))
				if m, _ := c.recv(); m.Op.Tag != opBindResponse {
					t.Fatal("no bind response")
				}
			}
			c.send(encodeSearch(2, "cn="+big, nil))
			for {
				m, _ := c.recv()
				if m.ID == 0 {
					if code, _ := result(t, m); tc.wantDone || code != resultProtocolError {
						t.Fatalf("notice of disconnection (code %d), want done %v", code, tc.wantDone)
					}
					c.nc.SetReadDeadline(time.Now().Add(patience))
					if _, err := c.br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatalf("connection not closed: %v", err)
					}
					return
				}
				if m.Op.Tag == opSearchDone {
					if !tc.wantDone {
						t.Fatal("a 100 KiB message before any bind was accepted")
					}
					return
				}
			}
		})
	}
}

// TestQueuedBytesCapped: with the directory not answering, a bound client
// that keeps sending large requests has at most maxQueuedBytes waiting in
// passgate; the rest waits in the socket.
func TestQueuedBytesCapped(t *testing.T) {
	ts := startServer(t, nil)
	ts.up.mu.Lock()
	ts.up.hold = true
	ts.up.mu.Unlock()
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW))
	c.recv()
	msg := strings.Repeat("b", 256<<10)
	go func() {
		for i := int64(2); i < 2+2*DefaultMaxInFlight+16; i++ {
			if _, err := c.nc.Write(encodeSearch(i, "cn="+msg, nil)); err != nil {
				return // the connection was closed at the end of the test
			}
		}
	}()
	// The queue is full when the reader, holding the next message, finds
	// no room for it: then nothing more is ever queued.
	size := len(encodeSearch(2, "cn="+msg, nil))
	peak := 0
	full := func() bool {
		for _, sc := range ts.srv.set.Live() {
			sc.mu.Lock()
			peak = max(peak, sc.queuedBytes)
			sc.mu.Unlock()
		}
		if peak > maxQueuedBytes {
			t.Fatalf("%d bytes queued, cap %d", peak, maxQueuedBytes)
		}
		return peak+size > maxQueuedBytes
	}
	for deadline := time.Now().Add(patience); !full(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes ever queued: the test did not fill the queue", peak)
		}
	}
	if peak < maxQueuedBytes/2 {
		t.Fatalf("only %d bytes ever queued: the test did not fill the queue", peak)
	}
}

// TestPreBindQueuedBytesCapped: before a bind has succeeded, a client
// that pipelines large binds behind one that is being decided has at
// most preBindQueuedBytes waiting in passgate (one message always fits);
// the rest waits in the socket.
func TestPreBindQueuedBytesCapped(t *testing.T) {
	ts := startServer(t, nil)
	release := ts.holdDecisions()
	defer release()
	c := ts.dial(t)
	pw := strings.Repeat("p", preBindMaxMessageBytes-200)
	size := len(encodeBind(2, aliceDN, pw))
	if size > preBindMaxMessageBytes {
		t.Fatalf("a bind of %d bytes is over the pre-bind message cap", size)
	}
	go func() {
		for i := int64(1); i <= 40; i++ {
			if _, err := c.nc.Write(encodeBind(i, aliceDN, pw)); err != nil {
				return // the connection was closed at the end of the test
			}
		}
	}()
	// The reader is stuck once it holds a message that does not fit:
	// the first bind with the decider, the next ones queued up to the cap.
	peak := 0
	stuck := func() bool {
		for _, sc := range ts.srv.set.Live() {
			sc.mu.Lock()
			peak = max(peak, sc.queuedBytes)
			sc.mu.Unlock()
		}
		if peak > max(preBindQueuedBytes, size) {
			t.Fatalf("%d bytes queued before a bind succeeded, cap %d", peak, preBindQueuedBytes)
		}
		return peak > 0 && peak+size > preBindQueuedBytes
	}
	for deadline := time.Now().Add(patience); !stuck(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes ever queued: the test did not fill the queue", peak)
		}
	}
	// Held there for a while, it queues nothing more.
	time.Sleep(200 * time.Millisecond)
	stuck()
}

// TestPreBindTimeoutWhileWaitingForTheExecutor: a client that has not
// bound and pipelines behind a bind (against RFC 4511 §4.2.1) while the
// bind waits for an anonymous search held by the directory makes the
// reader wait for room in the queue, outside any read; the connection is
// still closed at its pre-bind deadline, not left until the directory
// answers. Two large searches fill the pre-bind queue, and 64 small ones
// the executor's channel; a StartTLS waits for what is before it.
func TestPreBindTimeoutWhileWaitingForTheExecutor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pad, n int
	}{{"two-large", 40 << 10, 2}, {"many-small", 1, 2 * DefaultMaxInFlight}, {"starttls", 0, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			const preBind = 500 * time.Millisecond
			ts := startServer(t, func(o *Options) { o.AllowAnonymous = true; o.PreBindTimeout = preBind })
			ts.up.mu.Lock()
			ts.up.hold = true
			ts.up.mu.Unlock()
			start := time.Now() // before the server's accept, where its deadline counts from
			c := ts.dial(t)
			c.send(encodeSearch(1, aliceDN, nil))
			waitFor(t, "the anonymous search to be held by the directory", func() bool {
				ts.up.mu.Lock()
				defer ts.up.mu.Unlock()
				if len(ts.up.sessions) == 0 {
					return false
				}
				s := ts.up.sessions[0]
				s.mu.Lock()
				defer s.mu.Unlock()
				return len(s.held) == 1
			})
			msgs := [][]byte{encodeBind(2, aliceDN, alicePW)}
			if tc.n == 0 {
				// StartTLS waits for the search before it, outside
				// enqueue.
				msgs = [][]byte{encodeExtended(2, oidStartTLS)}
			}
			for i := range tc.n {
				msgs = append(msgs, encodeSearch(int64(3+i), "cn="+strings.Repeat("x", tc.pad)+","+aliceDN, nil))
			}
			go func() { _, _ = c.nc.Write(bytes.Join(msgs, nil)) }()
			c.nc.SetReadDeadline(time.Now().Add(patience))
			_, err := io.Copy(io.Discard, c.nc)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("still open %v after connecting, with a pre-bind timeout of %v", patience, preBind)
			}
			if d := time.Since(start); d < preBind {
				t.Fatalf("closed %v after connecting, before the pre-bind timeout of %v", d, preBind)
			}
		})
	}
}

// TestAbandonOfQueuedBindIsIgnored: a bind cannot be abandoned (RFC 4511
// §4.11); it is answered.
func TestAbandonOfQueuedBindIsIgnored(t *testing.T) {
	ts := startServer(t, nil)
	release := ts.holdDecisions()
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW), encodeBind(2, aliceDN, alicePW))
	waitFor(t, "the first bind reaching the decision", func() bool { return len(ts.dec.decidedUsers()) > 0 })
	// The reader acts on the Abandon before it queues the WhoAmI behind
	// it: once the WhoAmI is queued, the Abandon has been seen.
	c.send(envelope(3, []byte{0x50, 0x01, 0x02}, nil), encodeExtended(4, oidWhoAmI)) // Abandon(2), WhoAmI
	waitFor(t, "the WhoAmI sent after the Abandon being queued", func() bool {
		cs := ts.connOf(t)
		cs.mu.Lock()
		defer cs.mu.Unlock()
		return cs.queued[4] != nil
	})
	release()
	for _, want := range []int64{1, 2} {
		m, _ := c.recv()
		if code, _ := result(t, m); m.ID != want || m.Op.Tag != opBindResponse || code != resultSuccess {
			t.Fatalf("got id %d tag %d code %d, want the success of bind %d", m.ID, m.Op.Tag, code, want)
		}
	}
}

// TestAbandonWhileSending: an Abandon that arrives while the request is
// being sent upstream is passed on once Send returns.
func TestAbandonWhileSending(t *testing.T) {
	ts := startServer(t, nil)
	gate, enter := make(chan struct{}), make(chan struct{}, 1)
	ts.up.mu.Lock()
	ts.up.hold, ts.up.sendGate, ts.up.sendEnter = true, gate, enter
	ts.up.mu.Unlock()
	c := ts.dial(t)
	c.send(encodeBind(1, aliceDN, alicePW))
	c.recv()
	c.send(encodeSearch(2, aliceDN, nil))
	select {
	case <-enter:
	case <-time.After(patience):
		t.Fatal("search never reached Send")
	}
	c.send(envelope(3, []byte{0x50, 0x01, 0x02}, nil)) // Abandon(2)
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		cs := ts.connOf(t)
		cs.mu.Lock()
		n := len(cs.inflight)
		cs.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("abandon not seen")
		}
	}
	close(gate)
	s := ts.up.sessions[0]
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		s.mu.Lock()
		got := slices.Clone(s.abandoned)
		s.mu.Unlock()
		if slices.Equal(got, []int64{1}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("abandoned upstream: %v, want [1]", got)
		}
	}
}

// connOf returns the server side of the only connection.
func (ts *testServer) connOf(t *testing.T) *conn {
	t.Helper()
	for _, c := range ts.srv.set.Live() {
		return c
	}
	t.Fatal("no connection")
	return nil
}

// TestRelayBindOpensSessionOnlyWithoutSignOfLife: in relay mode a bind
// opens its upstream session first (so that a directory outage is a 52
// whatever the secret) only when the directory has not answered anyone
// within upstreamFresh; otherwise the session opens at the first
// operation that needs it. Once the sign of life is stale and the
// directory is down, every bind is a 52 again, app password or not.
func TestRelayBindOpensSessionOnlyWithoutSignOfLife(t *testing.T) {
	start := time.Now()
	ts := startServer(t, func(o *Options) { o.Mode = ModeRelay })
	sessions := func() int {
		ts.up.mu.Lock()
		defer ts.up.mu.Unlock()
		return len(ts.up.sessions)
	}
	if code, _ := ts.bindCode(t, 1, aliceDN, alicePW); code != resultSuccess {
		t.Fatalf("first bind: code %d", code)
	}
	if n := sessions(); n != 1 {
		t.Fatalf("first bind, no sign of life yet: %d sessions opened, want 1", n)
	}
	if seen := ts.srv.upstreamSeen.Load(); seen < start.UnixNano() {
		t.Fatal("the first bind's session left no sign of life")
	}
	// "Right after" whatever the machine's speed: the sign of life stays
	// fresh until the test makes it stale below.
	ts.srv.upstreamSeen.Store(time.Now().Add(time.Hour).UnixNano())
	code, c := ts.bindCode(t, 1, aliceDN, alicePW)
	if code != resultSuccess {
		t.Fatalf("second bind: code %d", code)
	}
	if n := sessions(); n != 1 {
		t.Fatalf("second bind right after the first: %d sessions opened, want still 1", n)
	}
	c.send(encodeSearch(2, aliceDN, nil))
	for {
		m, _ := c.recv()
		if m.ID != 2 {
			t.Fatalf("search: reply to %d", m.ID)
		}
		if m.Op.Tag == opSearchDone {
			if code, _ := result(t, m); code != resultSuccess {
				t.Fatalf("search after a bind without a session: code %d", code)
			}
			break
		}
	}
	if n := sessions(); n != 2 {
		t.Fatalf("after the search: %d sessions, want 2 (opened by the search)", n)
	}

	ts.up.mu.Lock()
	ts.up.openErr = errors.New("directory down")
	ts.up.mu.Unlock()
	ts.srv.upstreamSeen.Store(time.Now().Add(-upstreamFresh).UnixNano())
	for _, pw := range []string{alicePW, "wrong"} {
		if code, _ := ts.bindCode(t, 1, aliceDN, pw); code != resultUnavailable {
			t.Fatalf("bind with a stale sign of life and the directory down: code %d, want 52", code)
		}
	}
}

// TestResolveIsCached: an application that binds with its own account
// (a DN outside the templates) again and again is looked up once per
// resolveCacheTTL, not once per bind; the directory still checks each
// password, and a wrong one still fails.
func TestResolveIsCached(t *testing.T) {
	ts := startServer(t, func(o *Options) { o.Mode = ModeRelay })
	resolves := func() int {
		ts.up.mu.Lock()
		defer ts.up.mu.Unlock()
		return len(ts.up.resolved)
	}
	for i := range 3 {
		if code, _ := ts.bindCode(t, 1, wikiDN, wikiPW); code != resultSuccess {
			t.Fatalf("bind %d as the application: code %d", i, code)
		}
		if i == 0 {
			// However slow the machine, the next binds come within the
			// TTL: the answer stays cached until the test expires it below.
			ts.srv.resolved.mu.Lock()
			for k, e := range ts.srv.resolved.m {
				e.until = e.until.Add(time.Hour)
				ts.srv.resolved.m[k] = e
			}
			ts.srv.resolved.mu.Unlock()
		}
	}
	if code, _ := ts.bindCode(t, 1, wikiDN, "wrong"); code != resultInvalidCredentials {
		t.Fatalf("wrong password with a cached name: code %d, want 49", code)
	}
	if n := resolves(); n != 1 {
		t.Fatalf("4 binds looked the name up %d times, want 1", n)
	}
	if n := len(ts.up.bindsSeen()); n != 4 {
		t.Fatalf("the directory checked %d passwords, want 4", n)
	}
	// Once the answer is older than the TTL, the next bind asks again.
	ts.srv.resolved.mu.Lock()
	for k, e := range ts.srv.resolved.m {
		e.until = time.Now().Add(-time.Second)
		ts.srv.resolved.m[k] = e
	}
	ts.srv.resolved.mu.Unlock()
	if code, _ := ts.bindCode(t, 1, wikiDN, wikiPW); code != resultSuccess {
		t.Fatalf("bind after the TTL: code %d", code)
	}
	if n := resolves(); n != 2 {
		t.Fatalf("after the TTL: %d lookups, want 2", n)
	}
}
