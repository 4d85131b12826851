package imapfront

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// earlyUpstream is a fakeUpstream that can open its connection early.
// Open waits until release is closed (when set) or its context ends; a
// Login on the pending connection goes to the fakeUpstream.
type earlyUpstream struct {
	*fakeUpstream
	release chan struct{} // nil: Open returns at once
	hold    chan struct{} // when set, Open waits for it first, whatever its context says
	openErr error

	mu       sync.Mutex
	opens    []netip.AddrPort
	ids      [][]IDField
	ctxEnded bool // an Open returned because its context ended
	logins   int  // Login on a pending connection
	closes   int  // Close of a pending connection
}

func (e *earlyUpstream) Open(ctx context.Context, client netip.AddrPort, id []IDField) (PendingUpstream, error) {
	e.mu.Lock()
	e.opens = append(e.opens, client)
	e.ids = append(e.ids, id)
	release, hold, err := e.release, e.hold, e.openErr
	e.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if release != nil {
		select {
		case <-release:
		case <-ctx.Done():
			e.mu.Lock()
			e.ctxEnded = true
			e.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	return &earlyPending{e: e}, nil
}

func (e *earlyUpstream) counts() (opens, logins, closes int, ctxEnded bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.opens), e.logins, e.closes, e.ctxEnded
}

type earlyPending struct{ e *earlyUpstream }

func (p *earlyPending) Login(ctx context.Context, req LoginRequest) (net.Conn, string, error) {
	p.e.mu.Lock()
	p.e.logins++
	p.e.mu.Unlock()
	return p.e.fakeUpstream.Login(ctx, req)
}

func (p *earlyPending) Close() error {
	p.e.mu.Lock()
	p.e.closes++
	p.e.mu.Unlock()
	return nil
}

// TestEarlyDial: the upstream connection is opened before the decision;
// an allowed login logs in on it, a refused one closes it without logging
// in, and the client gets the same replies as without it. When it cannot
// be opened, every login gets the same temporary failure, right secret or
// wrong, without a decision (so no success is audited).
func TestEarlyDial(t *testing.T) {
	const ok = "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	tests := []struct {
		name    string
		login   string
		openErr error
		reply   string
		logins  int  // Logins on the pending connection
		closes  int  // Closes of it
		primary bool // the Login carried the client's password
		decided int  // attempts the decision saw
	}{
		{name: "ok/app-password", login: "a LOGIN alice \"" + appSecret + "\"", reply: ok, logins: 1, decided: 1},
		{name: "ok/passthrough", login: "a LOGIN bob " + primaryPass, reply: ok, logins: 1, primary: true, decided: 1},
		{name: "deny/wrong-app-password", login: "a LOGIN alice \"zzzz zzzz zzzz zzzz\"", reply: "a " + failLine, closes: 1, decided: 1},
		{name: "deny/primary-of-enforced-user", login: "a LOGIN carol secret", reply: "a " + failLine, closes: 1, decided: 1},
		{name: "upstream-refused/passthrough", login: "a LOGIN bob wrong", reply: "a " + failLine, logins: 1, primary: true, decided: 1},
		{name: "unavailable/upstream-down-wrong-secret", login: "a LOGIN alice \"zzzz zzzz zzzz zzzz\"", openErr: errors.New("dial: connection refused"), reply: "a " + unavailableLine},
		{name: "unavailable/upstream-down-app-password", login: "a LOGIN alice \"" + appSecret + "\"", openErr: errors.New("dial: connection refused"), reply: "a " + unavailableLine},
		{name: "unavailable/upstream-down-primary", login: "a LOGIN bob " + primaryPass, openErr: errors.New("dial: connection refused"), reply: "a " + unavailableLine},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eu := &earlyUpstream{fakeUpstream: &fakeUpstream{}, openErr: tc.openErr}
			ts := startServer(t, func(o *Options) { o.Upstream = eu })
			ts.up = eu.fakeUpstream
			rc := ts.tlsClient(t)
			rc.loginAfterID(tc.login, tc.reply)
			if tc.reply == ok {
				rc.send("z LOGOUT\r\n")
				rc.expect("* BYE upstream logging out", "z OK LOGOUT done by upstream")
			}
			// A refused login's pending connection is closed by now, or
			// soon by Open's goroutine.
			waitFor(t, "the pending connection closed", func() bool {
				_, _, closes, _ := eu.counts()
				return closes >= tc.closes
			})
			opens, logins, closes, _ := eu.counts()
			if opens != 1 || logins != tc.logins || closes != tc.closes {
				t.Errorf("Open %d, Login %d, Close %d; want 1, %d, %d", opens, logins, closes, tc.logins, tc.closes)
			}
			eu.mu.Lock()
			client, id := eu.opens[0], eu.ids[0]
			eu.mu.Unlock()
			if want := rc.c.LocalAddr().(*net.TCPAddr).AddrPort(); client != want {
				t.Errorf("Open for %v, want the client's %v", client, want)
			}
			if len(id) != 1 || id[0] != (IDField{"name", "Thunderbird"}) {
				t.Errorf("Open with the client's ID %v", id)
			}
			if attempts, _, _ := ts.dec.snapshot(); len(attempts) != tc.decided {
				t.Errorf("%d attempts decided, want %d", len(attempts), tc.decided)
			}
			if tc.openErr != nil {
				ts.dec.mu.Lock()
				unavailables := ts.dec.unavailables
				ts.dec.mu.Unlock()
				if unavailables != 1 {
					t.Errorf("%d outcomes recorded as unavailable, want 1", unavailables)
				}
			}
			reqs, _ := eu.fakeUpstream.snapshot()
			if len(reqs) != tc.logins {
				t.Fatalf("%d upstream logins, want %d", len(reqs), tc.logins)
			}
			for _, r := range reqs {
				if r.Primary != tc.primary || (string(r.Password) != "") != tc.primary {
					t.Errorf("upstream login %+v: primary %v, want %v", r, r.Primary, tc.primary)
				}
			}
		})
	}
}

// TestEarlyDialBeforeDecision: the decision waits for the upstream
// connection (without a ready one at hand), so that a slow upstream holds
// every login alike, and an upstream that fails to open gets the same
// temporary failure after the uniform delay whatever the secret.
func TestEarlyDialBeforeDecision(t *testing.T) {
	const delay = 150 * time.Millisecond
	tests := []struct {
		name    string
		secret  string
		openErr error
		reply   string
		decided int
	}{
		{name: "deny/wrong-secret", secret: "zzzz zzzz zzzz zzzz", reply: "a " + failLine, decided: 1},
		{name: "ok/app-password", secret: appSecret, reply: "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in", decided: 1},
		{name: "unavailable/wrong-secret", secret: "zzzz zzzz zzzz zzzz", openErr: errors.New("greeting: EOF"), reply: "a " + unavailableLine},
		{name: "unavailable/app-password", secret: appSecret, openErr: errors.New("greeting: EOF"), reply: "a " + unavailableLine},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eu := &earlyUpstream{fakeUpstream: &fakeUpstream{}, release: make(chan struct{}), openErr: tc.openErr}
			ts := startServer(t, func(o *Options) { o.Upstream = eu })
			ts.up = eu.fakeUpstream
			ts.dec.set(func(f *fakeDecider) { f.delay = delay })
			rc := ts.tlsClient(t)
			start := time.Now()
			rc.send("a LOGIN alice \"" + tc.secret + "\"\r\n")
			waitFor(t, "Open", func() bool {
				opens, _, _, _ := eu.counts()
				return opens == 1
			})
			// Open has not returned: nothing is decided yet.
			if attempts, _, _ := ts.dec.snapshot(); len(attempts) != 0 {
				t.Fatalf("%d attempts decided while the upstream connection was opening", len(attempts))
			}
			close(eu.release)
			rc.expect(tc.reply)
			if took := time.Since(start); tc.reply != "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in" && took < delay {
				t.Errorf("failure after %v, want at least %v", took, delay)
			}
			if attempts, _, _ := ts.dec.snapshot(); len(attempts) != tc.decided {
				t.Errorf("%d attempts decided, want %d", len(attempts), tc.decided)
			}
			if reqs, _ := eu.fakeUpstream.snapshot(); tc.reply != "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in" && len(reqs) != 0 {
				t.Errorf("a login that failed reached the upstream: %d logins", len(reqs))
			}
		})
	}
}

// readyUpstream is an earlyUpstream that keeps some connections ready:
// OpenReady hands one out (with the client's ID) while any is left.
type readyUpstream struct {
	*earlyUpstream
	ready       int // connections left to hand out
	readyOpens  int // OpenReady calls that handed one out
	readyMisses int // OpenReady calls that found none
}

func (r *readyUpstream) OpenReady(ctx context.Context, client netip.AddrPort, id []IDField) (PendingUpstream, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ready == 0 {
		r.readyMisses++
		return nil, false
	}
	r.ready--
	r.readyOpens++
	r.ids = append(r.ids, id)
	return &earlyPending{e: r.earlyUpstream}, true
}

// TestReadyUpstream: a login takes a ready connection when the upstream
// has one (Open is not called), falls back to Open when it has none, and
// a refused login closes the connection it took without logging in.
func TestReadyUpstream(t *testing.T) {
	const ok = "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	tests := []struct {
		name        string
		ready       int
		login       string
		reply       string
		readyOpens  int // connections taken from the ready set
		opens       int // Open calls
		logins      int // Logins on the pending connection
		closes      int // Closes of it
		readyMisses int
	}{
		{name: "ok/ready", ready: 1, login: "a LOGIN alice \"" + appSecret + "\"", reply: ok, readyOpens: 1, logins: 1},
		{name: "ok/none-ready", login: "a LOGIN alice \"" + appSecret + "\"", reply: ok, opens: 1, logins: 1, readyMisses: 1},
		{name: "deny/ready", ready: 1, login: "a LOGIN alice \"zzzz zzzz zzzz zzzz\"", reply: "a " + failLine, readyOpens: 1, closes: 1},
		{name: "deny/none-ready", login: "a LOGIN alice \"zzzz zzzz zzzz zzzz\"", reply: "a " + failLine, opens: 1, closes: 1, readyMisses: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ru := &readyUpstream{earlyUpstream: &earlyUpstream{fakeUpstream: &fakeUpstream{}}, ready: tc.ready}
			ts := startServer(t, func(o *Options) { o.Upstream = ru })
			ts.up = ru.fakeUpstream
			rc := ts.tlsClient(t)
			rc.loginAfterID(tc.login, tc.reply)
			waitFor(t, "the pending connection closed", func() bool {
				_, _, closes, _ := ru.counts()
				return closes >= tc.closes
			})
			opens, logins, closes, _ := ru.counts()
			ru.mu.Lock()
			readyOpens, misses, ids := ru.readyOpens, ru.readyMisses, ru.ids
			ru.mu.Unlock()
			if readyOpens != tc.readyOpens || opens != tc.opens || logins != tc.logins || closes != tc.closes || misses != tc.readyMisses {
				t.Errorf("ready %d, Open %d, Login %d, Close %d, none ready %d; want %d, %d, %d, %d, %d",
					readyOpens, opens, logins, closes, misses, tc.readyOpens, tc.opens, tc.logins, tc.closes, tc.readyMisses)
			}
			if len(ids) != 1 || len(ids[0]) != 1 || ids[0][0] != (IDField{"name", "Thunderbird"}) {
				t.Errorf("the connection was introduced with the client's ID %v", ids)
			}
		})
	}
}
