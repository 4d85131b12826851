package store_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// lockedBuffer is a log destination for a Journal's background writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func loginEvent(user, outcome string, n int) store.AuditEvent {
	return store.AuditEvent{Actor: fmt.Sprintf("ldap:127.0.0.1:%d", n), Action: "login", Subject: user, Outcome: outcome,
		Detail: fmt.Sprintf("n=%d", n)}
}

// testJournalOrder: queued writes come back through the Journal's own
// reads at once, in the order they were made, with last use updated.
func testJournalOrder(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "alice", store.MFAEnforced)
	a, _ := create(t, s, "alice", "phone")
	j := store.NewJournal(s, nil)
	for i := range 10 {
		var err error
		if i%2 == 0 {
			err = j.RecordLogin(ctx, a.ID, store.Usage{Addr: fmt.Sprintf("192.0.2.1:%d", i), Proto: "ldap", Client: "wiki"}, loginEvent("alice", "success", i))
		} else {
			err = j.Record(ctx, loginEvent("alice", "failure", i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	evs, err := j.Audit(ctx, store.AuditFilter{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Action == "login" {
			got = append(got, ev.Detail)
		}
	}
	if want := "n=0 n=1 n=2 n=3 n=4 n=5 n=6 n=7 n=8 n=9"; strings.Join(got, " ") != want {
		t.Fatalf("journal order: %q, want %q", strings.Join(got, " "), want)
	}
	list, err := j.ListAppPasswords(ctx, "alice")
	if err != nil || len(list) != 1 || list[0].LastUsedAddr != "192.0.2.1:8" || list[0].LastUsedClient != "wiki" {
		t.Fatalf("last use after the journal: %+v, %v", list, err)
	}
}

// testJournalConcurrent: many writers at once lose nothing, and they
// share transactions (fewer commits than writes is not observable here,
// but every event must land exactly once).
func testJournalConcurrent(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "bob", store.MFAEnforced)
	a, _ := create(t, s, "bob", "mail")
	j := store.NewJournal(s, nil)
	const writers, each = 20, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				n := w*each + i
				if err := j.RecordLogin(ctx, a.ID, store.Usage{Addr: "192.0.2.2:1", Proto: "imap"}, loginEvent("bob", "success", n)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Read through the Store, not the Journal: Flush alone must suffice.
	evs, err := s.Audit(ctx, store.AuditFilter{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, ev := range evs {
		if ev.Action == "login" {
			seen[ev.Detail]++
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct login events stored, want %d", len(seen), writers*each)
	}
	for d, n := range seen {
		if n != 1 {
			t.Fatalf("event %s stored %d times", d, n)
		}
	}
}

// testJournalDeleted: a login whose app password is deleted before the
// batch commits is still audited; the batch is not lost with it.
func testJournalDeleted(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "carol", store.MFAEnforced)
	a, _ := create(t, s, "carol", "old")
	if _, err := s.DeleteAppPassword(ctx, "carol", "old"); err != nil {
		t.Fatal(err)
	}
	j := store.NewJournal(s, nil)
	if err := j.RecordLogin(ctx, a.ID, store.Usage{Proto: "smtp"}, loginEvent("carol", "success", 1)); err != nil {
		t.Fatal(err)
	}
	if err := j.Record(ctx, loginEvent("carol", "failure", 2)); err != nil {
		t.Fatal(err)
	}
	evs, err := j.Audit(ctx, store.AuditFilter{User: "carol"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Action == "login" {
			got = append(got, ev.Outcome+":"+ev.Detail)
		}
	}
	if strings.Join(got, " ") != "success:n=1 failure:n=2" {
		t.Fatalf("events after a deleted app password: %q", got)
	}
}

// testJournalLastUses: one batch touching several app passwords, some
// more than once and one deleted meanwhile, leaves each with its own
// latest use, and every event lands.
func testJournalLastUses(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, s, "dave", store.MFAEnforced)
	addUser(t, s, "erin", store.MFAEnforced)
	d1, _ := create(t, s, "dave", "phone")
	d2, _ := create(t, s, "dave", "laptop")
	e1, _ := create(t, s, "erin", "mail")
	gone, _ := create(t, s, "erin", "old")
	if _, err := s.DeleteAppPassword(ctx, "erin", "old"); err != nil {
		t.Fatal(err)
	}
	j := store.NewJournal(s, nil)
	base := time.Now().Add(-time.Minute)
	writes := []struct {
		id   int64
		user string
		addr string
	}{
		{d1.ID, "dave", "192.0.2.1:1"}, {e1.ID, "erin", "192.0.2.2:1"}, {d2.ID, "dave", "192.0.2.3:1"},
		{gone.ID, "erin", "192.0.2.4:1"}, {d1.ID, "dave", "192.0.2.1:2"}, {e1.ID, "erin", "192.0.2.2:2"},
	}
	for i, w := range writes {
		ev := loginEvent(w.user, "success", i)
		ev.Time = base.Add(time.Duration(i) * time.Second)
		if err := j.RecordLogin(ctx, w.id, store.Usage{At: ev.Time, Addr: w.addr, Proto: "imap"}, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		user, label, addr string
		at                time.Time
	}{
		{"dave", "phone", "192.0.2.1:2", base.Add(4 * time.Second)},
		{"dave", "laptop", "192.0.2.3:1", base.Add(2 * time.Second)},
		{"erin", "mail", "192.0.2.2:2", base.Add(5 * time.Second)},
	} {
		list, err := s.ListAppPasswords(ctx, c.user)
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, a := range list {
			if a.Label != c.label {
				continue
			}
			found = true
			if a.LastUsedAddr != c.addr || a.LastUsedProto != "imap" || a.LastUsedAt == nil || !a.LastUsedAt.Equal(c.at.UTC().Truncate(time.Microsecond)) {
				t.Errorf("%s/%s last use: %q %q %v, want %q imap %v", c.user, c.label, a.LastUsedAddr, a.LastUsedProto, a.LastUsedAt, c.addr, c.at)
			}
		}
		if !found {
			t.Errorf("%s/%s missing", c.user, c.label)
		}
	}
	evs, err := s.Audit(ctx, store.AuditFilter{Kind: store.AuditKindLogin})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(writes) {
		t.Fatalf("%d login events stored, want %d", len(evs), len(writes))
	}
}

// testJournalCloseFlushes: Close commits what is queued before closing.
func testJournalCloseFlushes(t *testing.T, f *fixture) {
	j, logs := f.journal(t)
	for i := range 500 {
		if err := j.Record(context.Background(), loginEvent("dave", "failure", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	// A write after Close is refused and goes to the log instead.
	if err := j.Record(context.Background(), loginEvent("dave", "failure", 500)); err == nil {
		t.Error("Record after Close returned no error")
	}
	if out := logs.String(); !strings.Contains(out, `detail="n=500"`) || strings.Contains(out, `detail="n=499"`) {
		t.Errorf("log after Close: want only the late event n=500:\n%s", out)
	}
	s2 := f.migrated(t)
	evs, err := s2.Audit(ctxT(t), store.AuditFilter{User: "dave"})
	if err != nil || len(evs) != 500 {
		t.Fatalf("after Close: %d events, %v; want 500", len(evs), err)
	}
}

// testJournalIdleFlusher: the flusher outlives an empty queue (so that
// logins a few milliseconds apart do not start a goroutine each), a
// write queued while it idles is committed without a Flush, and Close
// ends it at once.
func testJournalIdleFlusher(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	j := store.NewJournal(s, nil)
	store.SetJournalIdle(j, time.Hour)
	// committed: the store itself (not the Journal, whose reads flush)
	// holds n events of frank.
	committed := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
			evs, err := s.Audit(ctx, store.AuditFilter{User: "frank"})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d events of frank committed after 1 min, want %d", len(evs), n)
			}
		}
	}
	for i := range 2 {
		if err := j.Record(ctx, loginEvent("frank", "success", i)); err != nil {
			t.Fatal(err)
		}
		committed(i + 1)
		if !store.JournalRunning(j) {
			t.Fatalf("after write %d, the flusher ended with the queue empty", i)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); store.JournalRunning(j); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the idle flusher still runs 1 min after Close")
		}
	}
}

// testJournalStoreDown: writes that the store refuses are not lost
// silently: each event is in the log at ERROR, without blocking the
// writer, and Flush returns.
func testJournalStoreDown(t *testing.T, f *fixture) {
	s, err := store.Open(context.Background(), f.options())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	j := store.NewJournal(s, slog.New(slog.NewTextHandler(&logs, nil)))
	// Record must not wait for the store: with the flusher held back,
	// nothing is written while the writes are recorded, so a Record that
	// waited for its write would never return.
	release := store.HoldJournalFlusher(j)
	rctx := ctxT(t)
	recorded := make(chan error, 1)
	go func() {
		for i := range 3 {
			if err := j.Record(rctx, loginEvent("erin", "failure", i)); err != nil {
				recorded <- fmt.Errorf("Record with the store down: %w (want queued)", err)
				return
			}
		}
		recorded <- nil
	}()
	select {
	case err := <-recorded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Record with the store down blocked the caller: it waits for the store")
	}
	if pending := j.Pending(); pending != 3 {
		t.Fatalf("after 3 writes with the flusher held: Pending %d, want 3", pending)
	}
	release()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if lost, pending := j.Lost(), j.Pending(); lost != 3 || pending != 0 {
		t.Errorf("after the store refused 3 writes: Lost %d, Pending %d; want 3, 0", lost, pending)
	}
	out := logs.String()
	if !strings.Contains(out, "audit events not stored") || !strings.Contains(out, "check that the database is reachable") {
		t.Fatalf("log lacks the failure and its fix:\n%s", out)
	}
	for i := range 3 {
		if !strings.Contains(out, fmt.Sprintf(`detail="n=%d"`, i)) {
			t.Errorf("log lacks lost event n=%d:\n%s", i, out)
		}
	}
}
