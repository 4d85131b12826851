package ldapfront

import (
	"testing"
	"time"
)

// patience bounds every wait for a state in these tests. It is generous on
// purpose: a busy machine under -race makes a test slower, never wrong.
const patience = time.Minute

// waitFor polls cond until it holds and fails the test, naming what it
// waited for, when patience runs out first.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %v: %s", patience, what)
		}
	}
}
