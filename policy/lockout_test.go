package policy

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// lockoutEngine is an Engine over the fake store with lockout cfg and a
// clock the test moves.
func lockoutEngine(cfg Lockout) (*Engine, *time.Time) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	e := New(Options{Store: newFake(), FailureDelay: -1, Lockout: cfg, Now: func() time.Time { return now }})
	return e, &now
}

func try(t *testing.T, e *Engine, user, secret, from string) Decision {
	t.Helper()
	d, err := e.Decide(context.Background(), Attempt{Proto: IMAP, User: user, Secret: Secret(secret), TLS: true,
		Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000), Started: started(e)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// attemptSeq makes every test attempt's start time its own.
var attemptSeq atomic.Int64

// started gives each attempt its own start time, as listeners do (the
// lockout tells attempts apart by it).
func started(e *Engine) time.Time {
	return e.now().Add(time.Duration(attemptSeq.Add(1)))
}

// guess is a wrong password: refused by the decision (MFA enforced) or,
// for a user without MFA, by the upstream.
func guess(t *testing.T, e *Engine, user, from string) {
	t.Helper()
	a := Attempt{Proto: IMAP, User: user, Secret: "guess", TLS: true, Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000), Started: started(e)}
	d, err := e.Decide(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow {
		e.PrimaryResult(context.Background(), a, d, false)
	}
}

func TestLockoutOffByDefault(t *testing.T) {
	e, _ := lockoutEngine(Lockout{})
	for range 100 {
		try(t, e, "alice", "wrong", "203.0.113.1")
	}
	if d := try(t, e, "alice", goodApp, "203.0.113.1"); !d.Allow {
		t.Fatalf("without lockout, the right app password after 100 failures: %s", d.Reason)
	}
}

func TestLockout(t *testing.T) {
	cfg := Lockout{MaxFailures: 3, MaxAddressFailures: 5, MaxUserFailures: 8, Window: 10 * time.Minute, Duration: 15 * time.Minute}

	t.Run("pair", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		for range 3 {
			try(t, e, "alice", "wrong", "203.0.113.1")
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
		for range 2 {
			try(t, e, "alice", "wrong", "203.0.113.1")
		}
		*now = now.Add(11 * time.Minute) // the window has passed: the count starts again
		for range 2 {
			try(t, e, "alice", "wrong", "203.0.113.1")
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
			try(t, e, "alice", "wrong", "2001:db8:1:2::"+string(rune('a'+i)))
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
			e.Decide(context.Background(), Attempt{Proto: IMAP, User: "alice", Secret: "x", TLS: false,
				Client: netip.MustParseAddrPort("203.0.113.1:1")})
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
			a := Attempt{Proto: LDAP, User: "dave", Secret: "wrong", TLS: true, Client: netip.MustParseAddrPort("203.0.113.9:1"), Started: started(e)}
			d, _ := e.Decide(context.Background(), a)
			if !d.Allow || d.Kind != KindPrimary {
				t.Fatalf("dave (no MFA) before the lockout: %+v", d)
			}
			e.PrimaryResult(context.Background(), a, d, false)
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
		return Attempt{Proto: LDAP, User: "dave", Secret: "guess", TLS: true,
			Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)}
	}
	t.Run("simultaneous-guesses-stop-at-the-threshold", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		var admitted []Attempt
		for range 20 { // all sent before the upstream answers any
			a := at("203.0.113.5")
			a.Started = started(e)
			if d, _ := e.Decide(context.Background(), a); d.Allow {
				admitted = append(admitted, a)
			}
		}
		if len(admitted) != 3 {
			t.Fatalf("%d of 20 simultaneous guesses reached the upstream, want 3", len(admitted))
		}
		for _, a := range admitted {
			e.PrimaryResult(context.Background(), a, Decision{Allow: true, Kind: KindPrimary, User: "dave"}, false)
		}
		if d := try(t, e, "dave", primaryPW, "203.0.113.5"); d.Allow {
			t.Fatal("after 3 refused guesses the pair is not locked")
		}
	})
	t.Run("a-familiar-client-may-open-many-at-once", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		a := at("192.0.2.20")
		a.Secret, a.Started = primaryPW, started(e)
		d, _ := e.Decide(context.Background(), a)
		e.PrimaryResult(context.Background(), a, d, true)
		for i := range 10 {
			b := at("192.0.2.20")
			b.Secret, b.Started = primaryPW, started(e)
			if d, _ := e.Decide(context.Background(), b); !d.Allow {
				t.Fatalf("connection %d of a familiar client, all at once: %s", i, d.Reason)
			}
		}
	})
	t.Run("temporary-failures-do-not-count", func(t *testing.T) {
		e, _ := lockoutEngine(cfg)
		for range 10 {
			a := at("203.0.113.6")
			a.Secret, a.Started = primaryPW, started(e)
			if d, _ := e.Decide(context.Background(), a); !d.Allow {
				t.Fatalf("during an upstream outage: %s", d.Reason)
			}
			e.Unavailable(context.Background(), a, context.DeadlineExceeded)
		}
	})
	t.Run("full-tables-still-count", func(t *testing.T) {
		e, now := lockoutEngine(cfg)
		l := e.lock
		for i := range maxTracked { // junk that an attacker made
			l.users["junk"+strconv.Itoa(i)] = &counter{windowStart: *now}
			l.pairs["junk"+strconv.Itoa(i)] = &counter{windowStart: *now}
		}
		for i := range 5 {
			guess(t, e, "alice", "198.51.100."+strconv.Itoa(10+i))
		}
		if d := try(t, e, "alice", goodApp, "198.51.100.99"); d.Allow {
			t.Fatal("with full tables, a spray at alice was not counted")
		}
		if len(l.users) > maxTracked || len(l.pairs) > maxTracked {
			t.Fatalf("tables grew past their bound: %d users, %d pairs", len(l.users), len(l.pairs))
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

// TestLockoutAdmissions: attempts that share a start time are settled
// one by one; an attempt without one reserves nothing; an attempt that
// is never finished stops counting as under way after a window.
func TestLockoutAdmissions(t *testing.T) {
	cfg := Lockout{MaxFailures: 3, Window: time.Minute, Duration: time.Minute}
	l := newLimiter(cfg)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	addr := netip.MustParseAddr("203.0.113.8")
	same := now.Add(-time.Second)
	for range 2 {
		if why := l.admit("dave", addr, same, now); why != "" {
			t.Fatal(why)
		}
	}
	l.finish("dave", addr, same, now, "failure")
	l.finish("dave", addr, same, now, "failure")
	c := l.pairs["dave\x00203.0.113.8/32"]
	if c.n != 2 || c.pending != 0 {
		t.Fatalf("two refused attempts with one start time: n %d, pending %d; want 2, 0", c.n, c.pending)
	}
	if why := l.admit("erin", addr, time.Time{}, now); why != "" || l.pairs["erin\x00203.0.113.8/32"] != nil {
		t.Fatalf("an attempt without a start time: %q, reserved %+v", why, l.pairs["erin\x00203.0.113.8/32"])
	}
	for range 3 { // admitted, never finished
		l.admit("frank", addr, now.Add(time.Duration(attemptSeq.Add(1))), now)
	}
	if why := l.admit("frank", addr, now.Add(time.Duration(attemptSeq.Add(1))), now); why == "" {
		t.Fatal("a fourth attempt while three are under way from an unfamiliar address was admitted")
	}
	later := now.Add(2 * time.Minute) // past a window and a minute: the sweep settles them
	if why := l.admit("frank", addr, later, later); why != "" {
		t.Fatalf("after the leaked attempts' window: %q", why)
	}
}
