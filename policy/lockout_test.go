package policy

import (
	"context"
	"net/netip"
	"strings"
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
		Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// guess is a wrong password: refused by the decision (MFA enforced) or,
// for a user without MFA, by the upstream.
func guess(t *testing.T, e *Engine, user, from string) {
	t.Helper()
	a := Attempt{Proto: IMAP, User: user, Secret: "guess", TLS: true, Client: netip.AddrPortFrom(netip.MustParseAddr(from), 40000)}
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
			a := Attempt{Proto: LDAP, User: "dave", Secret: "wrong", TLS: true, Client: netip.MustParseAddrPort("203.0.113.9:1")}
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
