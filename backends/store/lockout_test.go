package store_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// The shared lockout's statements: every instance counts into the same
// rows, atomically, and what a success changes rides on its audit event.

func testLockoutCount(t *testing.T, f *fixture) {
	a, b := f.migrated(t), f.open(t) // two instances on one database
	ctx := ctxT(t)
	t0 := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	win := t0.Add(-time.Hour)
	for i, s := range []*store.Store{a, b, a} {
		c, err := s.AddFailure(ctx, "alice", "203.0.113.1", t0.Add(time.Duration(i)*time.Second), win, win, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.Failures != i+1 {
			t.Fatalf("failure %d counted as %d", i+1, c.Failures)
		}
	}
	st, err := b.LockoutState(ctx, "alice", "203.0.113.1")
	if err != nil {
		t.Fatal(err)
	}
	if st.Pair.Failures != 3 || !st.Pair.WindowStart.Equal(t0) || st.Addr.Failures != 0 || st.User.Failures != 0 || !st.FamiliarSeen.IsZero() {
		t.Fatalf("state after 3 pair failures: %+v", st)
	}
	// A window that started before windowFrom starts again.
	later := t0.Add(2 * time.Hour)
	c, err := a.AddFailure(ctx, "alice", "203.0.113.1", later, later.Add(-time.Hour), later.Add(-time.Hour), nil)
	if err != nil || c.Failures != 1 {
		t.Fatalf("failure in a new window: %+v, %v", c, err)
	}
	// Lock: a lockout in a row, a new window.
	if err := b.Lock(ctx, "alice", "203.0.113.1", later, later.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	st, err = a.LockoutState(ctx, "alice", "203.0.113.1")
	if err != nil || st.Pair.Locks != 1 || !st.Pair.LockedUntil.Equal(later.Add(time.Minute)) || st.Pair.Failures != 0 {
		t.Fatalf("state after Lock: %+v, %v", st.Pair, err)
	}
	// Lockouts are remembered while recent, forgotten once old.
	c, err = a.AddFailure(ctx, "alice", "203.0.113.1", later.Add(2*time.Minute), later, later, nil)
	if err != nil || c.Locks != 1 {
		t.Fatalf("locks kept while recent: %+v, %v", c, err)
	}
	c, err = a.AddFailure(ctx, "alice", "203.0.113.1", later.Add(3*time.Hour), later.Add(2*time.Hour), later.Add(2*time.Hour), nil)
	if err != nil || c.Locks != 0 || c.Failures != 1 {
		t.Fatalf("locks forgotten once old: %+v, %v", c, err)
	}
	// Address and user counters are rows of their own.
	if _, err := a.AddFailure(ctx, "", "203.0.113.1", t0, win, win, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddFailure(ctx, "alice", "", t0, win, win, nil); err != nil {
		t.Fatal(err)
	}
	st, err = b.LockoutState(ctx, "alice", "203.0.113.1")
	if err != nil || st.Addr.Failures != 1 || st.User.Failures != 1 {
		t.Fatalf("address and user counters: %+v, %v", st, err)
	}
	// Someone else's rows are not read.
	st, err = b.LockoutState(ctx, "bob", "198.51.100.1")
	if err != nil || st.Pair.Failures+st.Addr.Failures+st.User.Failures != 0 {
		t.Fatalf("another user and address: %+v, %v", st, err)
	}
}

func testLockoutConcurrent(t *testing.T, f *fixture) {
	stores := []*store.Store{f.migrated(t), f.open(t), f.open(t)}
	ctx := ctxT(t)
	now := time.Now()
	const each = 20
	var wg sync.WaitGroup
	errs := make(chan error, len(stores)*each)
	for _, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.AddFailure(ctx, "", "203.0.113.9", now, now.Add(-time.Hour), now.Add(-time.Hour), nil); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st, err := stores[1].LockoutState(ctx, "x", "203.0.113.9")
	if err != nil || st.Addr.Failures != len(stores)*each {
		t.Fatalf("%d concurrent failures from %d instances counted as %d (%v)", len(stores)*each, len(stores), st.Addr.Failures, err)
	}
}

func testLockoutRecent(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	t1, err := s.LockoutTag("alice", "203.0.113.1", "wrong one")
	if err != nil {
		t.Fatal(err)
	}
	t2, _ := s.LockoutTag("alice", "203.0.113.1", "wrong two")
	again, _ := f.migrated(t).LockoutTag("alice", "203.0.113.1", "wrong one")
	other, _ := s.LockoutTag("alice", "203.0.113.2", "wrong one")
	if len(t1) != store.LockoutTagSize || !bytes.Equal(t1, again) || bytes.Equal(t1, t2) || bytes.Equal(t1, other) {
		t.Fatalf("tags: %x %x %x %x", t1, t2, again, other)
	}
	if bytes.Contains(t1, []byte("wrong")) {
		t.Fatal("the tag holds the secret")
	}
	now := time.Now()
	if _, err := s.AddFailure(ctx, "alice", "203.0.113.1", now, now.Add(-time.Hour), now, t1); err != nil {
		t.Fatal(err)
	}
	recent := append(append([]byte{}, t2...), t1...)
	if _, err := s.AddFailure(ctx, "alice", "203.0.113.1", now, now.Add(-time.Hour), now, recent); err != nil {
		t.Fatal(err)
	}
	// nil keeps what is there.
	if _, err := s.AddFailure(ctx, "alice", "203.0.113.1", now, now.Add(-time.Hour), now, nil); err != nil {
		t.Fatal(err)
	}
	st, err := s.LockoutState(ctx, "alice", "203.0.113.1")
	if err != nil || !bytes.Equal(st.Pair.Recent, recent) || st.Pair.Failures != 3 {
		t.Fatalf("recent tags: %x (%d failures), %v; want %x", st.Pair.Recent, st.Pair.Failures, err, recent)
	}
}

func testLockoutNote(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := s.AddFailure(ctx, "alice", "203.0.113.1", now, now.Add(-time.Hour), now, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Lock(ctx, "alice", "203.0.113.1", now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// Through Record.
	note := &store.LockoutNote{User: "alice", Addr: "203.0.113.1", At: now, ClearPair: true, Familiar: true}
	if err := s.Record(ctx, store.AuditEvent{Action: "login", Subject: "alice", Outcome: "success", Lockout: note}); err != nil {
		t.Fatal(err)
	}
	st, err := s.LockoutState(ctx, "alice", "203.0.113.1")
	if err != nil || st.Pair.Failures != 0 || st.Pair.Locks != 0 || !st.Pair.LockedUntil.IsZero() || !st.FamiliarSeen.Equal(now) {
		t.Fatalf("after a success's note: %+v, %v", st, err)
	}
	// Through RecordLogin and the Journal.
	addUser(t, s, "bob", store.MFAEnforced)
	ap, _ := create(t, s, "bob", "phone")
	n2 := &store.LockoutNote{User: "bob", Addr: "198.51.100.0/64", At: now, Familiar: true}
	if err := s.RecordLogin(ctx, ap.ID, store.Usage{At: now}, store.AuditEvent{Action: "login", Subject: "bob", Lockout: n2}); err != nil {
		t.Fatal(err)
	}
	j := store.NewJournal(s, slog.New(slog.DiscardHandler))
	n3 := &store.LockoutNote{User: "bob", Addr: "192.0.2.7", At: now.Add(time.Second), Familiar: true}
	if err := j.Record(ctx, store.AuditEvent{Action: "login", Subject: "bob", Lockout: n3}); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"198.51.100.0/64", "192.0.2.7"} {
		st, err := s.LockoutState(ctx, "bob", a)
		if err != nil || st.FamiliarSeen.IsZero() {
			t.Fatalf("bob from %s not familiar: %+v, %v", a, st, err)
		}
	}
	// At most 64 familiar addresses per user: the oldest go.
	for i := range 70 {
		n := &store.LockoutNote{User: "carol", Addr: "10.0.0." + itoa(i), At: now.Add(time.Duration(i) * time.Second), Familiar: true}
		if err := s.Record(ctx, store.AuditEvent{Action: "login", Subject: "carol", Lockout: n}); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		addr     string
		familiar bool
	}{{"10.0.0.0", false}, {"10.0.0.5", false}, {"10.0.0.6", true}, {"10.0.0.69", true}} {
		st, err := s.LockoutState(ctx, "carol", c.addr)
		if err != nil || st.FamiliarSeen.IsZero() == c.familiar {
			t.Fatalf("carol from %s familiar = %v, want %v (%v)", c.addr, !st.FamiliarSeen.IsZero(), c.familiar, err)
		}
	}
	// Pruning forgets idle counters and old familiar addresses.
	n, err := s.PruneLockout(context.Background(), now.Add(2*time.Hour), now.Add(time.Hour), now.Add(2*time.Minute))
	if err != nil || n == 0 {
		t.Fatalf("PruneLockout = %d, %v", n, err)
	}
	st, err = s.LockoutState(ctx, "carol", "10.0.0.69")
	if err != nil || !st.FamiliarSeen.IsZero() {
		t.Fatalf("after pruning: %+v, %v", st, err)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func testNetworks(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	ap, secret, err := s.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "office",
		Networks: []string{"192.0.2.77/24", " 2001:db8::/32", "198.51.100.9"}})
	if err != nil {
		t.Fatal(err)
	}
	want := "[192.0.2.0/24 2001:db8::/32 198.51.100.9/32]"
	if got := fmt.Sprint(ap.Networks); got != want {
		t.Fatalf("networks = %s, want %s (canonical)", got, want)
	}
	ls, err := s.LoginState(ctx, "alice", secret)
	if err != nil || ls.AppPassword == nil || fmt.Sprint(ls.AppPassword.Networks) != want {
		t.Fatalf("LoginState: %+v, %v", ls.AppPassword, err)
	}
	for _, c := range []struct {
		addr string
		ok   bool
	}{{"192.0.2.1", true}, {"::ffff:192.0.2.1", true}, {"198.51.100.9", true}, {"198.51.100.10", false}, {"2001:db8:1::1", true}, {"2001:db9::1", false}} {
		if got := ls.AppPassword.AllowedFrom(netip.MustParseAddr(c.addr)); got != c.ok {
			t.Fatalf("AllowedFrom(%s) = %v, want %v", c.addr, got, c.ok)
		}
	}
	list, err := s.ListAppPasswords(ctx, "alice")
	if err != nil || len(list) != 1 || fmt.Sprint(list[0].Networks) != want {
		t.Fatalf("ListAppPasswords: %+v, %v", list, err)
	}
	// Without networks: from anywhere.
	free, _ := create(t, s, "alice", "phone")
	if len(free.Networks) != 0 || !free.AllowedFrom(netip.MustParseAddr("203.0.113.1")) {
		t.Fatalf("an app password without networks: %+v", free.Networks)
	}
	for _, bad := range [][]string{{"192.0.2.0/33"}, {"example.test"}, {""}} {
		_, _, err := s.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "bad", Networks: bad})
		mustErr(t, err, store.ErrInvalid, "is not a CIDR")
	}
}

// testListenRevocations: on PostgreSQL, a deletion through one store
// reaches another's listener as it commits, and a lost notification
// connection comes back (and says so, for the one poll); SQLite says it
// cannot.
func testListenRevocations(t *testing.T, f *fixture) {
	a := f.migrated(t)
	b := f.open(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	revoked := make(chan int64, 16)
	connected := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() {
		done <- b.ListenRevocations(ctx, func(id int64) { revoked <- id }, func() { connected <- struct{}{} }, nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil && f.driver == store.DriverPostgres {
			t.Errorf("ListenRevocations: %v", err)
		}
	}()
	if f.driver == store.DriverSQLite {
		cancel()
		if err := <-done; !errors.Is(err, store.ErrNotSupported) {
			t.Fatalf("ListenRevocations on SQLite = %v, want ErrNotSupported", err)
		}
		done <- nil
		return
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-connected:
		case <-time.After(time.Minute):
			t.Fatalf("the listener did not %s", what)
		}
	}
	wait("connect")
	addUser(t, a, "alice", store.MFAEnforced)
	revokedID := func(label string) {
		t.Helper()
		ap, _ := create(t, a, "alice", label)
		start := time.Now()
		if _, err := a.DeleteAppPassword(ctxT(t), "alice", label); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case id := <-revoked:
				if id != ap.ID {
					continue
				}
				t.Logf("app password %d deleted through one store reached the other's listener after %v", id, time.Since(start))
				return
			case <-time.After(time.Minute):
				t.Fatalf("the deletion of %d was not announced", ap.ID)
			}
		}
	}
	revokedID("phone")
	// The listener's connection is cut: it comes back by itself.
	db, err := sql.Open("postgres", f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctxT(t), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the listener's connection: %d, %v", n, err)
	}
	wait("reconnect")
	revokedID("tablet")
}
