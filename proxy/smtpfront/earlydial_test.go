package smtpfront_test

import (
	"testing"
	"time"
)

// TestDialWhileDeciding: the upstream connection is opened while the
// decision runs, not before it. The fake Dial waits until Decide has
// started (it fails after patience), so a Dial made before the decision
// would fail the login with 454; the replies must be what the decision
// says, and only an allowed login logs in.
func TestDialWhileDeciding(t *testing.T) {
	tests := []struct {
		name, secret, want string
		logins             int
	}{
		{"allowed", appSecret, "235 ", 1},
		{"denied", "wrong", "535 ", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			deciding := make(chan struct{})
			gate := make(chan struct{})
			f.dec.deciding = deciding
			f.up.dialGate = gate
			go func() {
				select {
				case <-deciding:
					close(gate)
				case <-time.After(patience):
				}
			}()
			r := f.dialRaw(t, true)
			r.send("AUTH PLAIN " + b64("\x00alice\x00"+tc.secret))
			r.expect(tc.want)
			f.up.mu.Lock()
			defer f.up.mu.Unlock()
			if len(f.up.dials) != 1 || len(f.up.logins) != tc.logins {
				t.Fatalf("%d dials and %d logins; want 1 and %d", len(f.up.dials), len(f.up.logins), tc.logins)
			}
		})
	}
}
