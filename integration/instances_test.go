package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// twoInstances starts two passgate processes on one PostgreSQL database
// with one server key, as behind a balancer.
func twoInstances(t *testing.T) (a, b *passgateInstance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopPG)
	name := fmt.Sprintf("passgate_two_%d_%d", os.Getpid(), time.Now().UnixNano())
	dsn, err := testenv.CreateDatabase(ctx, base, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
	a = startPassgate(t, passgateConfig{postgresDSN: dsn})
	b = startPassgate(t, passgateConfig{postgresDSN: dsn, keyFile: filepath.Join(a.dir, "passgate.key")})
	return a, b
}

// TestInstancesShareRevocationAndLockout: two instances on one
// PostgreSQL. Deleting an app password through one closes its live
// session on the other as PostgreSQL announces it (LISTEN/NOTIFY, not the
// polling fallback), and failures spread over both lock the source as if
// one had seen them.
func TestInstancesShareRevocationAndLockout(t *testing.T) {
	a, b := twoInstances(t)
	a.enforce(t, "alice")
	pw := a.appPassword(t, "alice", "tablet")
	c := b.dial(t, false, "", nil)
	if err := c.Login("alice", pw).Wait(); err != nil {
		t.Fatalf("LOGIN through the second instance: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	a.admin(t, "app-password", "delete", "alice", "--label", "tablet")
	start := time.Now()
	select {
	case <-c.Closed():
		t.Logf("the live session on the other instance closed %v after the deletion", time.Since(start).Round(time.Microsecond))
	case <-time.After(patience):
		t.Fatalf("the session opened with a deleted app password is still open after %v", patience)
	}
	if !eventually(patience, func() bool { return strings.Contains(b.out.String(), "app password deletion announced") }) {
		t.Errorf("the second instance did not hear of the deletion through LISTEN/NOTIFY:\n%s", b.out.String())
	}

	// Failures spread over both instances: 10 distinct guesses (the
	// default max_failures) lock the pair on both.
	pw2 := a.appPassword(t, "alice", "phone")
	uniform := "a " + uniformFailure + "\r\n"
	for i := range 10 {
		p := []*passgateInstance{a, b}[i%2]
		if got := p.rawLoginFrom(t, "127.0.0.61", "alice", "guess-"+strconv.Itoa(i)); got != uniform {
			t.Fatalf("guess %d: %q", i, got)
		}
	}
	for _, p := range []*passgateInstance{a, b} {
		if got := p.rawLoginFrom(t, "127.0.0.61", "alice", pw2); got != uniform {
			t.Fatalf("the right app password from the pair that failed 10 times over two instances: %q", got)
		}
	}
	if got := b.rawLoginFrom(t, "127.0.0.62", "alice", pw2); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("alice from another address: %q", got)
	}
}
