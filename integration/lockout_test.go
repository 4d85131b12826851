package integration

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIMAPLockout runs serve with policy.lockout against Dovecot:
//   - three wrong secrets for alice from 127.0.0.91 lock that pair: her
//     right app password from there then gets the uniform failure, and
//     Dovecot sees no login for her; from 127.0.0.92 it works;
//   - bob (no MFA: Dovecot checks his password) logs in from 127.0.0.93;
//     a spray of wrong passwords at bob from 127.0.0.94–.97 locks him
//     out of unfamiliar addresses (.98), never out of .93; the spray's
//     failures are Dovecot's refusals, and the locked attempts never
//     log in at Dovecot (which may see their connection, opened while
//     the decision ran, closed without an auth attempt).
func TestIMAPLockout(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{policyYAML: "  lockout:\n    max_failures: 3\n    max_user_failures: 4\n    window: 5m\n    duration: 5m\n"})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	uniform := "a " + uniformFailure + "\r\n"

	for i := range 3 { // distinct guesses: a repeated wrong secret counts once
		if got := p.rawLoginFrom(t, "127.0.0.91", "alice", "wrong-guess-"+strconv.Itoa(i)); got != uniform {
			t.Fatalf("wrong secret: %q", got)
		}
	}
	start := time.Now()
	if got := p.rawLoginFrom(t, "127.0.0.91", "alice", pw); got != uniform {
		t.Fatalf("right app password from the locked pair: %q, want the uniform failure", got)
	}
	if took := time.Since(start); took < 90*time.Millisecond {
		t.Errorf("the lockout answered after %v, before the failure delay (100ms)", took)
	}
	if got := p.rawLoginFrom(t, "127.0.0.92", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("alice from another address: %q", got)
	}

	bobPW := d.Users["bob"]
	if got := p.rawLoginFrom(t, "127.0.0.93", "bob", bobPW); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("bob from his own address: %q", got)
	}
	// That success makes 127.0.0.93 familiar to bob in the store, in the
	// audit journal's transaction with its event, committed in the
	// background (on a busy machine, after the logins below): wait for
	// the event, so that the address is familiar before the spray.
	var bobAudit string
	if !eventually(patience, func() bool {
		bobAudit = p.admin(t, "audit", "--user", "bob")
		return strings.Contains(bobAudit, "imap:127.0.0.93:")
	}) {
		t.Fatalf("bob's login from 127.0.0.93 is not in the audit trail:\n%s", bobAudit)
	}
	for _, from := range []string{"127.0.0.94", "127.0.0.95", "127.0.0.96", "127.0.0.97"} {
		if got := p.rawLoginFrom(t, from, "bob", "spray-guess"); got != uniform {
			t.Fatalf("spray from %s: %q", from, got)
		}
	}
	before := len(d.Log())
	if got := p.rawLoginFrom(t, "127.0.0.98", "bob", bobPW); got != uniform {
		t.Fatalf("bob's right password from an unfamiliar address during the spray: %q, want the uniform failure", got)
	}
	if got := p.rawLoginFrom(t, "127.0.0.93", "bob", bobPW); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("bob from his familiar address during the spray: %q", got)
	}
	// Dovecot logs this later login after anything it would have logged
	// for the locked-out one.
	if !eventually(patience, func() bool { return strings.Contains(d.Log()[before:], "rip=127.0.0.93") }) {
		t.Fatalf("Dovecot did not log bob's login from 127.0.0.93:\n%s", d.Log()[before:])
	}
	// passgate opens its upstream connection while the decision runs:
	// Dovecot may see the locked-out client's connection, never a login.
	for _, line := range strings.Split(d.Log()[before:], "\n") {
		if strings.Contains(line, "127.0.0.98") && !noAuthAttempt(line) {
			t.Errorf("a locked-out login reached Dovecot:\n%s", d.Log()[before:])
		}
	}
	var out string
	if !eventually(patience, func() bool {
		out = p.admin(t, "audit", "--user", "bob")
		return strings.Contains(out, "locked out")
	}) {
		t.Errorf("the audit trail does not say why bob was refused:\n%s", out)
	}
}

// TestIMAPAppPasswordNetworks: an app password made with --networks logs
// in from its network and gets the uniform failure from elsewhere; the
// audit trail says why; the listing shows the networks.
func TestIMAPAppPasswordNetworks(t *testing.T) {
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "office", "--networks", "127.0.0.40/30,2001:db8::/32")
	uniform := "a " + uniformFailure + "\r\n"
	if got := p.rawLoginFrom(t, "127.0.0.41", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("from inside its network: %q", got)
	}
	if got := p.rawLoginFrom(t, "127.0.0.44", "alice", pw); got != uniform {
		t.Fatalf("from outside its network: %q, want the uniform failure", got)
	}
	var out string
	if !eventually(patience, func() bool {
		out = p.admin(t, "audit", "--user", "alice")
		return strings.Contains(out, "is not allowed from 127.0.0.44 (its networks: 127.0.0.40/30,2001:db8::/32)")
	}) {
		t.Errorf("the audit trail does not say why:\n%s", out)
	}
	if list := p.admin(t, "app-password", "list", "alice"); !strings.Contains(list, "127.0.0.40/30,2001:db8::/32") {
		t.Errorf("app-password list does not show the networks:\n%s", list)
	}
}
