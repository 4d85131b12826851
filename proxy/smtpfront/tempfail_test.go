package smtpfront_test

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/smtpfront"
)

const temp454 = "454 4.7.0 Temporary authentication failure\r\n"

// TestTemporaryFailureNoOracle: with the upstream down, a valid app
// password and a wrong secret must get the same reply after the same
// delay, or the 454 tells an attacker the secret was right. The upstream
// is dialled before the decision, so the decision never even runs, and
// the attempt is audited as unavailable.
func TestTemporaryFailureNoOracle(t *testing.T) {
	const delay = 300 * time.Millisecond
	for _, secret := range []string{appSecret, "wrong"} {
		t.Run(secret, func(t *testing.T) {
			f := newFixture(t, nil)
			f.up.down = true
			f.dec.delay = delay
			r := f.dialRaw(t, true)
			start := time.Now()
			r.send("AUTH PLAIN " + b64("\x00alice\x00"+secret))
			got := r.reply()
			took := time.Since(start)
			if got != temp454 {
				t.Fatalf("reply %q, want %q", got, temp454)
			}
			if took < delay-20*time.Millisecond {
				t.Fatalf("454 after %v, before the uniform delay %v", took, delay)
			}
			f.dec.mu.Lock()
			defer f.dec.mu.Unlock()
			if len(f.dec.attempts) != 0 {
				t.Errorf("the decision ran (%d) although the upstream was down", len(f.dec.attempts))
			}
			if f.dec.fails != 1 || len(f.dec.unavailable) != 1 || f.dec.unavailable[0] == nil {
				t.Errorf("Fail %d times, Unavailable %v; want once each with a cause", f.dec.fails, f.dec.unavailable)
			}
		})
	}
}

// TestTemporaryFailureRecorded: every 454 (decision error, upstream
// login failing after the decision, also for a primary password) waits
// out the delay and is recorded with Unavailable; the pending upstream
// connection of a denied or failed attempt is closed.
func TestTemporaryFailureRecorded(t *testing.T) {
	tests := []struct {
		name, user, secret string
	}{
		{"decision-error", "down", "x"},
		{"primary-upstream-login-fails", "bob", "upstream-flaky"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.dec.delay = 200 * time.Millisecond
			r := f.dialRaw(t, true)
			start := time.Now()
			r.send("AUTH PLAIN " + b64("\x00"+tc.user+"\x00"+tc.secret))
			if got := r.reply(); got != temp454 {
				t.Fatalf("reply %q", got)
			}
			if took := time.Since(start); took < 180*time.Millisecond {
				t.Fatalf("454 after %v, before the uniform delay", took)
			}
			f.dec.mu.Lock()
			defer f.dec.mu.Unlock()
			if f.dec.fails != 1 || len(f.dec.unavailable) != 1 || len(f.dec.primary) != 0 {
				t.Fatalf("Fail %d, Unavailable %v, PrimaryResult %v; want Fail and Unavailable once", f.dec.fails, f.dec.unavailable, f.dec.primary)
			}
		})
	}
	t.Run("denied-closes-pending", func(t *testing.T) {
		f := newFixture(t, nil)
		r := f.dialRaw(t, true)
		r.send("AUTH PLAIN " + b64("\x00alice\x00wrong"))
		r.expect("535 ")
		f.up.mu.Lock()
		defer f.up.mu.Unlock()
		if strings.Join(f.up.log, ",") != "CLOSE-PENDING" || len(f.up.logins) != 0 {
			t.Fatalf("upstream saw %q and logins %v; want the pending connection closed", f.up.log, f.up.logins)
		}
	})
}

// TestCloseDuringData: closing the server while a client is in the
// middle of a DATA upload ends promptly, and nothing is committed.
func TestCloseDuringData(t *testing.T) {
	f := newFixture(t, nil)
	f.up.dataStarted = make(chan struct{}, 1)
	r := f.dialRaw(t, true)
	r.login()
	r.startData()
	r.send("Subject: partial")
	select {
	case <-f.up.dataStarted:
	case <-time.After(patience):
		t.Fatal("Data did not start")
	}
	start := time.Now()
	if err := f.srv.Close(); err != nil && !errors.Is(err, smtpfront.ErrServerClosed) {
		t.Fatalf("Close: %v", err)
	}
	if took := time.Since(start); took > patience { // not the read timeout of minutes
		t.Fatalf("Close took %v with a DATA upload in progress", took)
	}
	_, _ = io.Copy(io.Discard, r.r)
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	if len(f.up.messages) != 0 {
		t.Fatalf("a partial message was committed: %q", f.up.messages)
	}
}
