package policy

import (
	"context"
	"crypto/rand"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// lockoutEngine is an Engine over the fake store with lockout cfg and a
// clock the test moves.
func lockoutEngine(cfg Lockout) (*Engine, *time.Time) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	e := New(Options{Store: newFake(), FailureDelay: -1, Lockout: cfg, Now: func() time.Time { return now }})
	return e, &now
}

// outcome is what try learnt of a login, finished as the upstream would
// have answered (Accepted for an allowed one).
type outcome struct {
	Allow  bool
	Reason string
}

func try(t *testing.T, e *Engine, user, secret, from string) outcome {
	t.Helper()
	d, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: user, Secret: Secret(secret), TLS: true,
		Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)})
	if err != nil {
		t.Fatal(err)
	}
	o := outcome{d.Allowed(), d.Reason()}
	d.Finish(context.Background(), Accepted)
	return o
}

// guess is a wrong password: refused by the decision (MFA enforced) or,
// for a user without MFA, by the upstream.
func guess(t *testing.T, e *Engine, user, from string) {
	t.Helper()
	a := Attempt{Proto: IMAP, User: user, Secret: Secret("guess-" + rand.Text()), TLS: true, Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)}
	d, err := e.Decide(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	d.Finish(context.Background(), Refused)
}

func TestLockoutOffByDefault(t *testing.T) {
	e, _ := lockoutEngine(Lockout{})
	for i := range 100 {
		try(t, e, "alice", "wrong"+strconv.Itoa(i), "203.0.113.1")
	}
	if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
		t.Fatalf("without lockout, the right app password after 100 failures: %s", d.Reason)
	}
}

func TestLockout(t *testing.T) {
	cfg := Lockout{MaxFailures: 3, MaxAddressFailures: 5, MaxUserFailures: 8, Window: 10 * time.Minute, Duration: 15 * time.Minute}

	t.Run("pair", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		for i := range 3 {
			try(t, e, "alice", "wrong"+strconv.Itoa(i), "203.0.113.1")
		}
		d := try(t, e, "alice", goodApp, "203.0.113.1")
		if d.Allow || !strings.Contains(d.Reason, "locked out") {
			t.Fatalf("right app password from a locked pair: allow %v (%s)", d.Allow, d.Reason)
		}
		if d := try(t, e, "alice", goodApp, "198.51.100.7"); !d.Allow {
			t.Fatalf("the same user from another address: %s", d.Reason)
		}
		*now = now.Add(15 * time.Minute)
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatalf("after the lockout's duration: %s", d.Reason)
		}
	})
	t.Run("window", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		for i := range 2 {
			try(t, e, "alice", "wrong"+strconv.Itoa(i), "203.0.113.1")
		}
		*now = now.Add(11 * time.Minute) // the window has passed: the count starts again
		for i := range 2 {
			try(t, e, "alice", "wrong"+strconv.Itoa(i), "203.0.113.1")
		}
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatalf("2 + 2 failures in two windows locked the pair: %s", d.Reason)
		}
	})
	t.Run("address-spares-familiar-users", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		if d := try(t, e, "alice", goodApp, "192.0.2.10"); !d.Allow { // alice's office
			t.Fatal(d.Reason)
		}
		for _, u := range []string{"bob", "carol", "dave", "erin", "frank"} {
			guess(t, e, u, "192.0.2.10") // someone at the same office guesses
		}
		if d := try(t, e, "erin", goodApp, "192.0.2.10"); d.Allow || !strings.Contains(d.Reason, "this address") {
			t.Fatalf("another user from the locked address: allow %v (%s)", d.Allow, d.Reason)
		}
		if d := try(t, e, "alice", goodApp, "192.0.2.10"); !d.Allow {
			t.Fatalf("alice, who logged in from the locked address before: %s", d.Reason)
		}
	})
	t.Run("user-spares-familiar-addresses", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		if d := try(t, e, "alice", goodApp, "192.0.2.10"); !d.Allow {
			t.Fatal(d.Reason)
		}
		for i := range 8 { // a spray at alice from 8 addresses, 1 each
			guess(t, e, "alice", "198.51.100."+string(rune('1'+i)))
		}
		if d := try(t, e, "alice", goodApp, "198.51.100.200"); d.Allow || !strings.Contains(d.Reason, "unfamiliar") {
			t.Fatalf("alice from a new address during the spray: allow %v (%s)", d.Allow, d.Reason)
		}
		if d := try(t, e, "ALICE", goodApp, "192.0.2.10"); !d.Allow {
			t.Fatalf("alice from her familiar address during the spray: %s", d.Reason)
		}
	})
	t.Run("ipv6-counts-a-64", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for i := range 3 {
			try(t, e, "alice", "wrong"+strconv.Itoa(i), "2001:db8:1:2::"+string(rune('a'+i)))
		}
		if d := try(t, e, "alice", goodApp, "2001:db8:1:2::ffff"); d.Allow {
			t.Fatal("failures from one /64 under different addresses did not lock it")
		}
		if d := try(t, e, "alice", goodApp, "2001:db8:1:3::1"); !d.Allow {
			t.Fatalf("another /64: %s", d.Reason)
		}
	})
	t.Run("not-counted", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for range 10 {
			// No secret was checked: plaintext refused, empty secret,
			// an expired app password (the right secret, unusable).
			l, _ := e.Decide(context.Background(), Attempt{Proto: IMAP, User: "alice", Secret: "x", TLS: false,
				Client: netip.MustParseAddrPort("203.0.113.1:1")})
			l.Finish(context.Background(), NotAsked)
			try(t, e, "alice", "", "203.0.113.1")
			try(t, e, "alice", expired, "203.0.113.1")
		}
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatalf("refusals that checked no secret locked the source: %s", d.Reason)
		}
	})
	t.Run("upstream-refusals-count", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for range 3 {
			a := Attempt{Proto: LDAP, User: "dave", Secret: Secret("wrong-" + rand.Text()), TLS: true, Client: netip.MustParseAddrPort("203.0.113.9:1")}
			d, _ := e.Decide(context.Background(), a)
			if !d.Allowed() || d.Credential() != Primary {
				t.Fatalf("dave (no MFA) before the lockout: %+v", d)
			}
			d.Finish(context.Background(), Refused)
		}
		if d := try(t, e, "dave", primaryPW, "203.0.113.9"); d.Allow {
			t.Fatal("a user without MFA whose password the upstream refused 3 times is not locked: the upstream would be asked again")
		}
	})
}

// TestLockoutBurstAndFullTables: the review's bypasses stay closed.
func TestLockoutBurstAndFullTables(t *testing.T) {
	cfg := Lockout{MaxFailures: 3, MaxUserFailures: 5, Window: 10 * time.Minute, Duration: 15 * time.Minute}
	at := func(from string) Attempt {
		return Attempt{Proto: LDAP, User: "dave", Secret: Secret("guess-" + rand.Text()), TLS: true,
			Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)}
	}
	t.Run("simultaneous-guesses-stop-at-the-threshold", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		var admitted []*Login
		for range 20 { // all sent before the upstream answers any
			d, _ := e.Decide(context.Background(), at("203.0.113.5"))
			if d.Allowed() {
				admitted = append(admitted, d)
			} else {
				d.Finish(context.Background(), NotAsked)
			}
		}
		if len(admitted) != 3 {
			t.Fatalf("%d of 20 simultaneous guesses reached the upstream, want 3", len(admitted))
		}
		for _, d := range admitted {
			d.Finish(context.Background(), Refused)
		}
		if d := try(t, e, "dave", primaryPW, "203.0.113.5"); d.Allow {
			t.Fatal("after 3 refused guesses the pair is not locked")
		}
	})
	t.Run("a-familiar-client-may-open-many-at-once", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		a := at("192.0.2.20")
		a.Secret = primaryPW
		d, _ := e.Decide(context.Background(), a)
		d.Finish(context.Background(), Accepted)
		var open []*Login
		for i := range 10 {
			d, _ := e.Decide(context.Background(), a)
			open = append(open, d)
			if !d.Allowed() {
				t.Fatalf("connection %d of a familiar client, all at once: %s", i, d.Reason())
			}
		}
		for _, d := range open {
			d.Finish(context.Background(), Accepted)
		}
	})
	t.Run("temporary-failures-do-not-count", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for range 10 {
			a := at("203.0.113.6")
			a.Secret = primaryPW
			d, _ := e.Decide(context.Background(), a)
			if !d.Allowed() {
				t.Fatalf("during an upstream outage: %s", d.Reason())
			}
			d.Finish(context.Background(), Unreachable(context.DeadlineExceeded))
		}
	})
	t.Run("full-tables-still-count", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		m := e.lock.mem
		for i := range maxTracked { // junk that an attacker made
			m.rows[[2]string{"junk" + strconv.Itoa(i), ""}] = &store.LockoutCounter{WindowStart: *now}
		}
		for i := range 5 {
			guess(t, e, "alice", "198.51.100."+strconv.Itoa(10+i))
		}
		if d := try(t, e, "alice", goodApp, "198.51.100.99"); d.Allow {
			t.Fatal("with full tables, a spray at alice was not counted")
		}
		if len(m.rows) > maxTracked {
			t.Fatalf("the table grew past its bound: %d rows", len(m.rows))
		}
	})
	t.Run("long-names-are-hashed", func(t *testing.T) {
		long := strings.Repeat("x", 8000)
		if k := lockKey(long); len(k) > 65 || lockKey(strings.ToUpper(long)) != k {
			t.Fatalf("lockKey of an 8000-byte name: %d bytes", len(k))
		}
	})
}

// TestLockoutRealmSpellingsShareACount: with policy.realms, "alice" and
// "alice@example.test" are one account and one count.
func TestLockoutRealmSpellingsShareACount(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	e := New(Options{Store: newFake(), FailureDelay: -1, Realms: []string{"example.test"}, Now: func() time.Time { return now },
		Lockout: Lockout{MaxFailures: 3, Window: time.Minute, Duration: time.Minute}})
	for _, u := range []string{"alice", "ALICE@example.test", "alice@Example.Test"} {
		guess(t, e, u, "203.0.113.77")
	}
	if d := try(t, e, "alice", goodApp, "203.0.113.77"); d.Allow {
		t.Fatal("three spellings of one account each got their own budget")
	}
}

// TestLockoutAdmissions: every Login holds its own admission, so
// attempts that arrive at the same instant are settled one by one; an
// attempt under way counts until its Login is finished (there is no
// sweep), and finishing it releases what it reserved.
func TestLockoutAdmissions(t *testing.T) {
	cfg := Lockout{MaxFailures: 3, Window: time.Minute, Duration: time.Minute}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	e := New(Options{Store: newFake(), FailureDelay: -1, Lockout: cfg, Now: func() time.Time { return now }})
	a := Attempt{Proto: LDAP, User: "dave", TLS: true, Client: netip.MustParseAddrPort("203.0.113.8:1"), Received: now.Add(-time.Second)}
	var same []*Login
	for i := range 2 {
		a.Secret = Secret("guess" + strconv.Itoa(i))
		l, _ := e.Decide(context.Background(), a)
		if !l.Allowed() {
			t.Fatal(l.Reason())
		}
		same = append(same, l)
	}
	for _, l := range same {
		l.Finish(context.Background(), Refused)
	}
	st, _ := e.lock.counters.LockoutState(context.Background(), "dave", "203.0.113.8/32")
	if st.Pair.Failures != 2 || len(e.lock.pending) != 0 {
		t.Fatalf("two refused attempts with one start time: %d failures, %d under way; want 2, 0", st.Pair.Failures, len(e.lock.pending))
	}
	f := Attempt{Proto: LDAP, User: "frank", Secret: "x", TLS: true, Client: a.Client}
	var open []*Login
	for range 3 { // under way
		l, _ := e.Decide(context.Background(), f)
		open = append(open, l)
	}
	l, _ := e.Decide(context.Background(), f)
	if l.Allowed() {
		t.Fatal("a fourth attempt while three are under way from an unfamiliar address was admitted")
	}
	l.Finish(context.Background(), NotAsked)
	now = now.Add(2 * time.Minute) // no sweep: still under way
	if l, _ := e.Decide(context.Background(), f); l.Allowed() {
		t.Fatal("attempts under way stopped counting without being finished")
	} else {
		l.Finish(context.Background(), NotAsked)
	}
	if n := e.InFlight(); n != 3 {
		t.Fatalf("InFlight = %d, want the 3 under way", n)
	}
	for _, l := range open {
		l.Finish(context.Background(), Unreachable(nil))
	}
	if l, _ := e.Decide(context.Background(), f); !l.Allowed() {
		t.Fatalf("after the attempts under way finished: %s", l.Reason())
	} else {
		l.Finish(context.Background(), Accepted)
	}
	if n := e.InFlight(); n != 0 || len(e.lock.pending) != 0 {
		t.Fatalf("InFlight = %d, %d under way; want 0", n, len(e.lock.pending))
	}
}

// TestLockoutAnchors: the rules the defaults follow (README, "Lockout").
func TestLockoutAnchors(t *testing.T) {
	cfg := Lockout{MaxFailures: 10, MaxAddressFailures: 50, MaxUserFailures: 100, Window: 24 * time.Hour, Duration: time.Minute, MaxDuration: time.Hour}
	t.Run("the-same-wrong-secret-counts-once", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for range 500 { // a phone retrying an old app password
			try(t, e, "alice", "old app password", "203.0.113.1")
		}
		for i := range 2 { // the last three are remembered
			try(t, e, "alice", "older"+strconv.Itoa(i), "203.0.113.1")
			try(t, e, "alice", "old app password", "203.0.113.1")
		}
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatalf("500 repeats of one wrong secret locked the user: %s", d.Reason)
		}
	})
	t.Run("lockouts-grow", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		n := 0
		for round, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute} {
			for range 10 {
				n++
				try(t, e, "alice", "wrong"+strconv.Itoa(n), "203.0.113.1")
			}
			*now = now.Add(want - time.Second)
			if d := try(t, e, "alice", goodApp, "203.0.113.1"); d.Allow {
				t.Fatalf("lockout %d ended before %s", round+1, want)
			}
			*now = now.Add(time.Second)
			if d := try(t, e, "alice", goodApp, "203.0.113.2"); !d.Allow { // elsewhere: not the locked pair
				t.Fatal(d.Reason)
			}
			if round < 2 {
				// Do not succeed from the locked address: that would
				// forget its lockouts.
				continue
			}
			if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
				t.Fatalf("after lockout %d (%s): %s", round+1, want, d.Reason)
			}
		}
	})
	t.Run("a-success-forgets-the-address-failures", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for i := range 9 {
			try(t, e, "alice", "typo"+strconv.Itoa(i), "203.0.113.1")
		}
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatal(d.Reason)
		}
		for i := range 9 {
			try(t, e, "alice", "typo again"+strconv.Itoa(i), "203.0.113.1")
		}
		if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
			t.Fatalf("9 + 9 failures around a success locked the pair: %s", d.Reason)
		}
	})
}

// TestLockoutShared: engines on one store see one count, and a new one
// (a restart) forgets nothing, failures and familiar addresses alike.
func TestLockoutShared(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: dir + "/passgate.db", KeyFile: dir + "/passgate.key"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := Lockout{MaxFailures: 3, MaxUserFailures: 6, Window: time.Hour, Duration: time.Minute}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	engine := func() *Engine {
		// The audit events (and the success notes they carry) go to the
		// store too, as in serve.
		return New(Options{Store: auditTo{newFake(), st}, Counters: st, FailureDelay: -1, Lockout: cfg, Now: func() time.Time { return now }})
	}
	a, b := engine(), engine()
	if d := try(t, a, "alice", goodApp, "192.0.2.10"); !d.Allow { // alice's office, through a
		t.Fatal(d.Reason)
	}
	guess(t, a, "alice", "203.0.113.1")
	guess(t, b, "alice", "203.0.113.1")
	guess(t, a, "alice", "203.0.113.1")
	if d := try(t, b, "alice", goodApp, "203.0.113.1"); d.Allow {
		t.Fatal("3 failures spread over two instances did not lock the pair")
	}
	for i := range 6 {
		guess(t, []*Engine{a, b}[i%2], "alice", "198.51.100."+strconv.Itoa(i+1))
	}
	c := engine() // a restart
	if d := try(t, c, "alice", goodApp, "198.51.100.99"); d.Allow || !strings.Contains(d.Reason, "unfamiliar") {
		t.Fatalf("after a restart, alice from a new address during the spray: allow %v (%s)", d.Allow, d.Reason)
	}
	if d := try(t, c, "alice", goodApp, "192.0.2.10"); !d.Allow {
		t.Fatalf("after a restart, alice from her familiar address (learnt by another instance): %s", d.Reason)
	}
	// A portal code's success makes its address familiar in erin's own
	// list (the one her logins read), through the store; the portal's
	// password step does not.
	web := func(f Factor, from string) {
		t.Helper()
		l, err := c.Decide(ctx, Attempt{Proto: Web, Factor: f, User: "erin", Secret: "pw", TLS: true, Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)})
		if err != nil || !l.Allowed() {
			t.Fatalf("%v from %s: %v %s", f, from, err, l.Reason())
		}
		l.Finish(ctx, Accepted)
	}
	web(Password, "198.51.100.50")
	if ls, err := st.LockoutState(ctx, "erin", "198.51.100.50/32"); err != nil || !ls.FamiliarSeen.IsZero() {
		t.Errorf("after the portal's password step: familiar %v, %v; want not familiar", ls.FamiliarSeen, err)
	}
	web(SecondFactor, "198.51.100.50")
	if ls, err := st.LockoutState(ctx, "erin", "198.51.100.50/32"); err != nil || ls.FamiliarSeen.IsZero() {
		t.Errorf("after a code's success: familiar %v, %v; want familiar for erin", ls.FamiliarSeen, err)
	}
}

// auditTo is a Store whose audit writes go to a real store.
type auditTo struct {
	*fakeStore
	st *store.Store
}

func (a auditTo) Record(ctx context.Context, ev store.AuditEvent) error { return a.st.Record(ctx, ev) }
func (a auditTo) RecordLogin(ctx context.Context, id int64, u store.Usage, ev store.AuditEvent) error {
	return a.st.Record(ctx, ev)
}

// TestAppPasswordNetworks: an app password with networks opens nothing
// from elsewhere, with the uniform failure; the audit says why, and the
// refusal (a right secret) does not count towards the lockout.
func TestAppPasswordNetworks(t *testing.T) {
	fs := newFake()
	fs.apps["alice\x00"+goodApp] = store.AppPassword{ID: 7, User: "alice", Label: "Outlook", Scopes: store.AllScopes(),
		Networks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}}
	var events []store.AuditEvent
	e := New(Options{Store: recorder{fs, &events}, FailureDelay: -1, Lockout: Lockout{MaxFailures: 2}})
	for _, c := range []struct {
		from  string
		allow bool
	}{
		{"192.0.2.77", true}, {"::ffff:192.0.2.8", true}, {"2001:db8:5::1", true},
		{"198.51.100.1", false}, {"2001:db9::1", false}, {"198.51.100.1", false}, {"198.51.100.1", false},
	} {
		d := try(t, e, "alice", goodApp, c.from)
		if d.Allow != c.allow {
			t.Fatalf("from %s: allow %v (%s), want %v", c.from, d.Allow, d.Reason, c.allow)
		}
		if !c.allow && !strings.Contains(d.Reason, "is not allowed from") {
			t.Fatalf("from %s: reason %q", c.from, d.Reason)
		}
	}
	last := events[len(events)-1]
	if last.Outcome != "failure" || !strings.Contains(last.Detail, "not allowed from 198.51.100.1 (its networks: 192.0.2.0/24,2001:db8::/32)") {
		t.Fatalf("audit event: %+v", last)
	}
	if st, _ := e.lock.counters.LockoutState(context.Background(), "alice", "198.51.100.1/32"); st.Pair.Failures != 0 {
		t.Fatalf("refusals by network counted %d failures", st.Pair.Failures)
	}
}

// recorder keeps the audit events of a fake store.
type recorder struct {
	*fakeStore
	events *[]store.AuditEvent
}

func (r recorder) Record(_ context.Context, ev store.AuditEvent) error {
	*r.events = append(*r.events, ev)
	return nil
}

// TestLockoutOneRead: with one store behind both the decision and the
// counters (a Journal over a Store and the Store, as in serve), a login
// reads its counters and login state in one statement, and decides
// exactly as with two reads: the lockout still locks, still spares a
// familiar address, and an invalid name is still refused as one.
func TestLockoutOneRead(t *testing.T) {
	ctx := context.Background()
	open := func() *store.Store {
		dir := t.TempDir()
		st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: dir + "/passgate.db", KeyFile: dir + "/passgate.key"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if _, err := st.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st, other := open(), open()
	j := store.NewJournal(st, nil)
	cfg := Lockout{MaxFailures: 3, MaxUserFailures: 6, Window: time.Hour, Duration: time.Minute}
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	for _, c := range []struct {
		name     string
		opts     Options
		combined bool
	}{
		{"journal-and-store", Options{Store: j, Counters: st}, true},
		{"store-and-store", Options{Store: st, Counters: st}, true},
		{"two-stores", Options{Store: st, Counters: other}, false},
		{"memory-counters", Options{Store: st}, false},
	} {
		c.opts.Lockout = cfg
		if got := New(c.opts).both != nil; got != c.combined {
			t.Errorf("%s: one read %v, want %v", c.name, got, c.combined)
		}
	}
	if _, err := st.SetMFA(ctx, "alice", store.MFAEnforced); err != nil {
		t.Fatal(err)
	}
	_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{Store: j, Counters: st, FailureDelay: -1, Lockout: cfg, Now: clock})
	if e.both == nil {
		t.Fatal("Journal over a Store and the Store: not read in one statement")
	}
	if d := try(t, e, "alice", secret, "192.0.2.10"); !d.Allow { // her office: familiar from now on
		t.Fatal(d.Reason)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		guess(t, e, "alice", "203.0.113.1")
	}
	if d := try(t, e, "alice", secret, "203.0.113.1"); d.Allow || !strings.Contains(d.Reason, "locked out") {
		t.Fatalf("after 3 failures from one address: allow %v (%s)", d.Allow, d.Reason)
	}
	for i := range 6 {
		guess(t, e, "alice", "198.51.100."+strconv.Itoa(i+1))
	}
	if d := try(t, e, "alice", secret, "198.51.100.99"); d.Allow || !strings.Contains(d.Reason, "unfamiliar") {
		t.Fatalf("alice from a new address during the spray: allow %v (%s)", d.Allow, d.Reason)
	}
	if d := try(t, e, "alice", secret, "192.0.2.10"); !d.Allow || d.Reason != "app password matched" {
		t.Fatalf("alice from her familiar address during the spray: allow %v (%s)", d.Allow, d.Reason)
	}
	if d := try(t, e, "al ice", secret, "192.0.2.99"); d.Allow || d.Reason != "user name is not valid" {
		t.Fatalf("an invalid name: allow %v (%s)", d.Allow, d.Reason)
	}
}

// TestLockoutSecondFactorApartFromPassword: wrong codes count under the
// user's second-factor name, which a right password does not clear, and
// the portal's password step makes no address familiar. One who knows
// alice's password signs in to the portal again after every 5 wrong
// codes (the portal ends a session there), from one address and then
// from many: the codes still add up to a lockout, of the pair and then
// of alice's codes from every address she has not logged in from. Her
// own codes from home, where her mail client logs in with an app
// password, still work, and so do her passkeys (which cannot be
// guessed) from anywhere.
func TestLockoutSecondFactorApartFromPassword(t *testing.T) {
	cfg := Lockout{MaxFailures: 10, MaxAddressFailures: 50, MaxUserFailures: 100, Window: time.Hour, Duration: time.Minute}
	e, _ := lockoutEngine(cfg)
	web := func(factor Factor, passkey bool, from string, r Result) (bool, string) {
		t.Helper()
		a := Attempt{Proto: Web, Factor: factor, Passkey: passkey, User: "alice", TLS: true, Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)}
		if factor == Password {
			a.Secret = "alice's primary password"
		}
		l, err := e.Decide(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		allowed, why := l.Allowed(), l.Reason()
		if !allowed {
			r = NotAsked
		}
		l.Finish(context.Background(), r)
		return allowed, why
	}
	// guessCodes signs in with the password from addr and guesses codes,
	// 5 per sign-in, until the codes are locked out (or 20 sign-ins).
	guessCodes := func(addr string) (codes int, why string) {
		t.Helper()
		for round := range 20 {
			if ok, why := web(Password, false, addr, Accepted); !ok {
				t.Fatalf("sign-in %d with the right password from %s: %s", round, addr, why)
			}
			for range 5 {
				ok, why := web(SecondFactor, false, addr, Refused)
				if !ok {
					return codes, why
				}
				codes++
			}
		}
		return codes, ""
	}
	const home = "192.0.2.10"
	// alice's phone logs in from home with an app password every day.
	if d := try(t, e, "alice", goodApp, home); !d.Allow {
		t.Fatal(d.Reason)
	}

	codes, why := guessCodes("203.0.113.1")
	if !strings.Contains(why, "locked out") {
		t.Fatalf("%d wrong codes in 20 sign-ins with the right password from one address, and its codes are not locked out (%q)", codes, why)
	}
	if codes > cfg.MaxFailures {
		t.Errorf("locked out after %d wrong codes from one address, want at most MaxFailures (%d)", codes, cfg.MaxFailures)
	}
	total := codes
	for i := 2; total < cfg.MaxUserFailures; i++ {
		n, _ := guessCodes("203.0.113." + strconv.Itoa(i))
		total += n
		if i > 20 {
			t.Fatalf("%d wrong codes from %d addresses, past MaxUserFailures (%d), and still guessing", total, i, cfg.MaxUserFailures)
		}
	}
	// A new address, signed in from with the password: the password
	// step does not make it familiar, so the per-user lockout holds.
	if ok, why := web(Password, false, "198.51.100.1", Accepted); !ok {
		t.Fatalf("the right password from a new address: %s", why)
	}
	if ok, why := web(SecondFactor, false, "198.51.100.1", Refused); ok || !strings.Contains(why, "unfamiliar") {
		t.Errorf("a code from a new address after %d wrong codes and a sign-in with the password there: allowed %v (%s), want the per-user lockout", total, ok, why)
	}
	if ok, why := web(SecondFactor, false, home, Accepted); !ok {
		t.Errorf("alice's code from home, where her phone logs in, after the guessing: %s", why)
	}
	if ok, why := web(SecondFactor, true, "198.51.100.2", Accepted); !ok {
		t.Errorf("alice's passkey from a new address after the guessing: %s", why)
	}
	if ok, why := web(Password, false, home, Accepted); !ok {
		t.Errorf("alice's password from home after the guessing: %s", why)
	}
}

// TestLockoutTokensApartFromUsers: the API's failed admin tokens count
// under a name no user name can be, so that a user called "admin-token"
// is not locked out by them (nor the tokens by her).
func TestLockoutTokensApartFromUsers(t *testing.T) {
	e, _ := lockoutEngine(Lockout{MaxFailures: 3, Window: time.Hour, Duration: time.Minute})
	from := netip.MustParseAddrPort("203.0.113.5:40000")
	for range 3 {
		l, err := e.Decide(context.Background(), Attempt{Proto: API, Factor: Token, User: "admin-token", Secret: Secret("bad-" + rand.Text()), TLS: true, Client: from})
		if err != nil || !l.Allowed() {
			t.Fatalf("token attempt: %v %s", err, l.Reason())
		}
		l.Finish(context.Background(), Refused)
	}
	l, err := e.Decide(context.Background(), Attempt{Proto: API, Factor: Token, User: "admin-token", Secret: "another", TLS: true, Client: from})
	if err != nil {
		t.Fatal(err)
	}
	if l.Allowed() || !strings.Contains(l.Reason(), "locked out") {
		t.Errorf("a fourth token from the address after 3 failures: allowed %v (%s), want locked out", l.Allowed(), l.Reason())
	}
	l.Finish(context.Background(), NotAsked)
	if d := try(t, e, "admin-token", goodApp, from.Addr().String()); strings.Contains(d.Reason, "locked out") {
		t.Errorf("a user called admin-token, from the address the tokens failed from: %s", d.Reason)
	}
}

// TestLockoutCodesFamiliarOnlyBeyondPasswords: the codes' familiar
// addresses are added to only by successes that proved more than a
// password. erin's MFA is enabled, so her primary password still opens
// IMAP: one who knows it and has locked her codes out of unfamiliar
// addresses logs in on IMAP from a new address, and his codes are still
// locked there. erin's app-password login from home and her passkey from
// a third address make those addresses familiar to her codes.
func TestLockoutCodesFamiliarOnlyBeyondPasswords(t *testing.T) {
	e, _ := lockoutEngine(Lockout{MaxFailures: 10, MaxUserFailures: 5, Window: time.Hour, Duration: time.Minute})
	web := func(passkey bool, from string, r Result) (bool, string) {
		t.Helper()
		l, err := e.Decide(context.Background(), Attempt{Proto: Web, Factor: SecondFactor, Passkey: passkey, User: "erin", TLS: true,
			Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)})
		if err != nil {
			t.Fatal(err)
		}
		allowed, why := l.Allowed(), l.Reason()
		if !allowed {
			r = NotAsked
		}
		l.Finish(context.Background(), r)
		return allowed, why
	}
	const home, attacker, other, travel = "192.0.2.10", "203.0.113.1", "203.0.113.2", "198.51.100.7"
	if d := try(t, e, "erin", goodApp, home); !d.Allow || d.Reason != "app password matched" {
		t.Fatalf("erin's app password from home: %+v", d)
	}
	for i := range 5 {
		if ok, why := web(false, attacker, Refused); !ok {
			t.Fatalf("wrong code %d: refused before the per-user threshold: %s", i, why)
		}
	}
	if d := try(t, e, "erin", primaryPW, other); !d.Allow {
		t.Fatalf("erin's primary password on IMAP (MFA enabled): %s", d.Reason)
	}
	if ok, why := web(false, other, Refused); ok || !strings.Contains(why, "unfamiliar") {
		t.Errorf("a code from where the primary password logged in on IMAP: allowed %v (%s), want the per-user lockout", ok, why)
	}
	if ok, why := web(false, home, Accepted); !ok {
		t.Errorf("erin's code from home, where her app password logs in: %s", why)
	}
	if ok, why := web(true, travel, Accepted); !ok {
		t.Fatalf("erin's passkey while traveling: %s", why)
	}
	if ok, why := web(false, travel, Accepted); !ok {
		t.Errorf("erin's code from where her passkey signed in: %s", why)
	}
}
