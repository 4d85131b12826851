package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// structLogin is a structured login event as policy records it.
func structLogin(at time.Time, user, addr, proto, outcome, cred string, appID int64, label string) store.AuditEvent {
	return store.AuditEvent{Time: at, Action: store.ActionLogin, Subject: user, Outcome: outcome,
		Actor: "ignored", Detail: "ignored", Protocol: proto, ClientAddr: addr, ClientPort: 40000, TLS: true,
		Credential: cred, AppPasswordID: appID, Label: label, Reason: "because " + outcome}
}

func testAuditStructured(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	ev := structLogin(at, "Alice", "2001:db8::1", "imap", "success", store.CredentialAppPassword, 7, "phone")
	ev.ClientName = "Outlook 2010"
	if err := s.Record(ctx, ev); err != nil {
		t.Fatal(err)
	}
	// An event in the form of before schema version 5 (no Credential)
	// keeps its actor and detail.
	old := store.AuditEvent{Time: at.Add(time.Second), Actor: "smtp:192.0.2.1:25", Action: "login", Subject: "bob", Outcome: "failure", Detail: "credential=none tls=no reason=x"}
	if err := s.Record(ctx, old); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Audit(ctx, store.AuditFilter{})
	if err != nil || len(evs) != 2 {
		t.Fatalf("Audit = %d events, %v", len(evs), err)
	}
	got := evs[0]
	want := store.AuditEvent{ID: got.ID, Time: at, Actor: "imap:[2001:db8::1]:40000", Action: "login", Subject: "Alice", Outcome: "success",
		Detail: "credential=app-password:7 (phone) tls=yes reason=because success client=Outlook 2010", Login: true, Protocol: "imap",
		ClientAddr: "2001:db8::1", ClientPort: 40000, TLS: true, ClientName: "Outlook 2010", Credential: "app-password", AppPasswordID: 7,
		Label: "phone", Reason: "because success"}
	if got != want {
		t.Fatalf("structured login read back as\n%+v\nwant\n%+v", got, want)
	}
	if o := evs[1]; o.Actor != old.Actor || o.Detail != old.Detail || !o.Login || o.Credential != "" {
		t.Fatalf("old-style login read back as %+v", o)
	}
}

func testAuditPageFilters(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	// 25 events, some sharing a time, so that the cursor needs the id.
	for i := range 25 {
		at := base.Add(time.Duration(i/2) * time.Minute)
		user, proto, outcome, cred, addr := "alice", "imap", "success", store.CredentialAppPassword, "192.0.2.1"
		var id int64 = 3
		label := "phone"
		if i%5 == 0 {
			user, proto, outcome, cred, addr, id, label = "bob", "smtp", "failure", store.CredentialNone, "198.51.100.7", 0, ""
		}
		if err := s.Record(ctx, structLogin(at, user, addr, proto, outcome, cred, id, label)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Record(ctx, store.AuditEvent{Time: base.Add(time.Hour), Actor: "cli:root", Action: "user.add", Subject: "carol", Outcome: "success"}); err != nil {
		t.Fatal(err)
	}
	// Paging through everything in pages of 4 gives each event once, in
	// order, and the last page has no next cursor.
	var all []store.AuditEvent
	var after store.AuditCursor
	pages := 0
	for {
		evs, next, err := s.AuditPage(ctx, store.AuditFilter{}, after, 4)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		all = append(all, evs...)
		if next.IsZero() {
			break
		}
		// The cursor survives its string form.
		if after, err = store.ParseAuditCursor(next.String()); err != nil || after != next {
			t.Fatalf("cursor %q parsed as %v, %v", next, after, err)
		}
	}
	if len(all) != 26 || pages != 7 {
		t.Fatalf("paged %d events in %d pages, want 26 in 7", len(all), pages)
	}
	if !slices.IsSortedFunc(all, func(a, b store.AuditEvent) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return int(a.ID - b.ID)
	}) {
		t.Fatal("pages are not in (time, id) order")
	}
	newest, _, err := s.AuditPage(ctx, store.AuditFilter{Newest: true}, store.AuditCursor{}, 1)
	if err != nil || len(newest) != 1 || newest[0].Action != "user.add" {
		t.Fatalf("newest first = %+v, %v", newest, err)
	}
	count := func(f store.AuditFilter) int {
		t.Helper()
		n := 0
		var after store.AuditCursor
		for {
			evs, next, err := s.AuditPage(ctx, f, after, 3)
			if err != nil {
				t.Fatalf("AuditPage(%+v): %v", f, err)
			}
			n += len(evs)
			if next.IsZero() {
				return n
			}
			after = next
		}
	}
	tests := []struct {
		name string
		f    store.AuditFilter
		want int
	}{
		{"user", store.AuditFilter{User: "BOB"}, 5},
		{"protocol", store.AuditFilter{Protocol: "imap"}, 20},
		{"outcome", store.AuditFilter{Outcome: "failure"}, 5},
		{"credential-kind", store.AuditFilter{Credential: store.CredentialAppPassword}, 20},
		{"app-password-id", store.AuditFilter{AppPasswordID: 3}, 20},
		{"label", store.AuditFilter{Label: "phone"}, 20},
		{"address", store.AuditFilter{Addr: "198.51.100.7"}, 5},
		{"since-until", store.AuditFilter{Since: base.Add(2 * time.Minute), Until: base.Add(4 * time.Minute)}, 4},
		{"kind-change", store.AuditFilter{Kind: store.AuditKindChange}, 1},
		{"kind-login", store.AuditFilter{Kind: store.AuditKindLogin}, 25},
		{"combined", store.AuditFilter{User: "alice", Outcome: "failure"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := count(tc.f); got != tc.want {
				t.Fatalf("%d events, want %d", got, tc.want)
			}
		})
	}
	for _, bad := range []store.AuditFilter{{Addr: "not-an-ip"}, {Credential: "password"}, {Kind: "other"}} {
		if _, _, err := s.AuditPage(ctx, bad, store.AuditCursor{}, 1); !strings.Contains(fmt.Sprint(err), "audit filter") {
			t.Fatalf("AuditPage(%+v) error = %v, want an audit filter error", bad, err)
		}
	}
	if _, err := store.ParseAuditCursor("12-x"); err == nil {
		t.Fatal("a malformed cursor was accepted")
	}
}

// testAuditRetention moves the clock instead of sleeping: events are
// recorded at chosen times and MaintainAudit is given "now".
func testAuditRetention(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	now := time.Now().UTC()
	r := store.AuditRetention{Login: 30 * 24 * time.Hour, Change: 400 * 24 * time.Hour}
	// Partitions for the days ahead exist once maintenance ran.
	if _, err := s.MaintainAudit(ctx, now, r); err != nil {
		t.Fatal(err)
	}
	ages := []time.Duration{0, 29 * 24 * time.Hour, 31 * 24 * time.Hour, 399 * 24 * time.Hour, 401 * 24 * time.Hour}
	for _, age := range ages {
		at := now.Add(-age)
		if err := s.Record(ctx, structLogin(at, "alice", "192.0.2.1", "imap", "success", store.CredentialPrimary, 0, "")); err != nil {
			t.Fatal(err)
		}
		if err := s.Record(ctx, store.AuditEvent{Time: at, Actor: "cli:root", Action: "user.set-mfa", Subject: "alice", Outcome: "success"}); err != nil {
			t.Fatal(err)
		}
	}
	// Many old logins, more than one delete batch on SQLite.
	for i := range 1200 {
		if err := s.Record(ctx, structLogin(now.Add(-40*24*time.Hour+time.Duration(i)*time.Second), "bob", "192.0.2.2", "smtp", "failure", store.CredentialNone, 0, "")); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.MaintainAudit(ctx, now, r)
	if err != nil {
		t.Fatal(err)
	}
	if m.Skipped {
		t.Fatal("maintenance skipped with no other instance at work")
	}
	logins, err := s.Audit(ctx, store.AuditFilter{Kind: store.AuditKindLogin})
	if err != nil {
		t.Fatal(err)
	}
	changes, err := s.Audit(ctx, store.AuditFilter{Kind: store.AuditKindChange})
	if err != nil {
		t.Fatal(err)
	}
	if len(logins) != 2 || len(changes) != 4 {
		t.Fatalf("after retention: %d logins (want the 2 of the last 30 days), %d changes (want the 4 of the last 400 days); maintenance %+v", len(logins), len(changes), m)
	}
	// A second run finds nothing to do.
	m, err = s.MaintainAudit(ctx, now, r)
	if err != nil || m.Deleted != 0 || len(m.Dropped) != 0 {
		t.Fatalf("second maintenance = %+v, %v; want nothing done", m, err)
	}
	// Moving the clock 40 days on drops the rest of the logins and keeps
	// the changes younger than 400 days.
	later := now.Add(40 * 24 * time.Hour)
	if _, err := s.MaintainAudit(ctx, later, r); err != nil {
		t.Fatal(err)
	}
	if logins, _ = s.Audit(ctx, store.AuditFilter{Kind: store.AuditKindLogin}); len(logins) != 0 {
		t.Fatalf("40 days on: %d logins left, want 0", len(logins))
	}
	// Logins recorded at the moved clock land in its partitions.
	if err := s.Record(ctx, structLogin(later, "alice", "192.0.2.1", "imap", "success", store.CredentialPrimary, 0, "")); err != nil {
		t.Fatal(err)
	}
	if logins, _ = s.Audit(ctx, store.AuditFilter{Kind: store.AuditKindLogin}); len(logins) != 1 {
		t.Fatalf("after a login at the moved clock: %d logins, want 1", len(logins))
	}
}

// testAuditMaintainConcurrent runs maintenance from several "instances"
// at once: none fails, and the work is done once.
func testAuditMaintainConcurrent(t *testing.T, f *fixture) {
	first := f.migrated(t)
	ctx := ctxT(t)
	now := time.Now().UTC()
	for i := range 50 {
		if err := first.Record(ctx, structLogin(now.Add(-60*24*time.Hour+time.Duration(i)*time.Second), "bob", "192.0.2.2", "smtp", "failure", store.CredentialNone, 0, "")); err != nil {
			t.Fatal(err)
		}
	}
	stores := []*store.Store{first, f.migrated(t), f.migrated(t)}
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.MaintainAudit(context.WithoutCancel(ctx), now, store.AuditRetention{})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	if evs, err := first.Audit(ctx, store.AuditFilter{}); err != nil || len(evs) != 0 {
		t.Fatalf("after concurrent maintenance: %d events, %v; want 0", len(evs), err)
	}
}

// testAuditJournalBatch writes structured events through the Journal,
// whose batches go in one multi-row INSERT, and reads them back as the
// Store writes them one by one.
func testAuditJournalBatch(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	j := store.NewJournal(s, nil)
	at := time.Now().UTC().Truncate(time.Microsecond)
	var want []store.AuditEvent
	for i := range 40 {
		ev := structLogin(at.Add(time.Duration(i)*time.Millisecond), fmt.Sprintf("user%d", i), "192.0.2.9", "ldap", "success", store.CredentialAppPassword, int64(i+1), "label")
		if err := j.Record(ctx, ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev)
	}
	evs, _, err := j.AuditPage(ctx, store.AuditFilter{}, store.AuditCursor{}, 100)
	if err != nil || len(evs) != len(want) {
		t.Fatalf("AuditPage after the journal = %d events, %v; want %d", len(evs), err, len(want))
	}
	for i, ev := range evs {
		w := want[i]
		if ev.Subject != w.Subject || ev.AppPasswordID != w.AppPasswordID || ev.Protocol != "ldap" || ev.ClientAddr != "192.0.2.9" ||
			!ev.Time.Equal(w.Time) || ev.Actor != "ldap:192.0.2.9:40000" || !ev.Login {
			t.Fatalf("event %d read back as %+v", i, ev)
		}
	}
}

// testAuditPageAcrossDays: pages over a trail spread across days — dense
// in some, empty in others, a change among the logins — come out the same
// in both directions, with small and large pages, as one ordered listing.
// On PostgreSQL a page is first looked for within a day of its start
// (AuditPage), and a day that does not fill it must not cut it short.
func testAuditPageAcrossDays(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	now := time.Now().UTC().Truncate(time.Second)
	offsets := []time.Duration{-96 * time.Hour, -95 * time.Hour, -50 * time.Hour, -49 * time.Hour, -48 * time.Hour, -30 * time.Hour,
		-3 * time.Hour, -2 * time.Hour, -2 * time.Hour, -time.Hour, -time.Minute, time.Hour}
	for i, d := range offsets {
		if err := s.Record(ctx, structLogin(now.Add(d), "alice", "192.0.2.1", "imap", "success", store.CredentialNone, 0, "")); err != nil {
			t.Fatal(err)
		}
		if i == 5 {
			if err := s.Record(ctx, store.AuditEvent{Time: now.Add(-29 * time.Hour), Actor: "cli:root", Action: "user.add", Subject: "carol", Outcome: "success"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	const total = 13
	for _, newest := range []bool{false, true} {
		for _, limit := range []int{1, 2, 5, 100} {
			var got []store.AuditEvent
			var after store.AuditCursor
			for range total + 1 {
				evs, next, err := s.AuditPage(ctx, store.AuditFilter{Newest: newest}, after, limit)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, evs...)
				if next.IsZero() {
					break
				}
				after = next
			}
			if len(got) != total {
				t.Fatalf("newest=%v limit=%d: %d events, want %d", newest, limit, len(got), total)
			}
			for i := 1; i < len(got); i++ {
				a, b := got[i-1], got[i]
				inOrder := a.Time.Before(b.Time) || a.Time.Equal(b.Time) && a.ID < b.ID
				if newest {
					inOrder = b.Time.Before(a.Time) || a.Time.Equal(b.Time) && b.ID < a.ID
				}
				if !inOrder {
					t.Fatalf("newest=%v limit=%d: event %d (%v #%d) then %d (%v #%d)", newest, limit, i-1, a.Time, a.ID, i, b.Time, b.ID)
				}
			}
		}
	}
}

// testAuditPageStaleStatistics: the first page, oldest first, starts
// with the oldest event whatever the planner's statistics say. On
// PostgreSQL its window is placed by the partitions' statistics
// (AuditPage): here they say that only today's partition holds logins,
// while older logins arrived after the ANALYZE and an account change is
// 300 days old.
func testAuditPageStaleStatistics(t *testing.T, f *fixture) {
	s := f.migrated(t)
	ctx := ctxT(t)
	now := time.Now().UTC().Truncate(time.Second)
	if _, err := s.MaintainAudit(ctx, now, store.AuditRetention{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Record(ctx, structLogin(now.Add(-time.Duration(i+1)*time.Minute), "alice", "192.0.2.1", "imap", "success", store.CredentialNone, 0, "")); err != nil {
			t.Fatal(err)
		}
	}
	if f.driver == store.DriverPostgres {
		db, err := sql.Open("postgres", f.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, `ANALYZE audit_events`); err != nil {
			t.Fatal(err)
		}
	}
	oldest := now.Add(-300 * 24 * time.Hour)
	if err := s.Record(ctx, store.AuditEvent{Time: oldest, Actor: "cli:root", Action: "user.add", Subject: "carol", Outcome: "success"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Record(ctx, structLogin(now.Add(-72*time.Hour+time.Duration(i)*time.Minute), "bob", "192.0.2.2", "smtp", "failure", store.CredentialNone, 0, "")); err != nil {
			t.Fatal(err)
		}
	}
	for _, limit := range []int{1, 2, 4, 100} {
		var got []store.AuditEvent
		var after store.AuditCursor
		for range 8 {
			evs, next, err := s.AuditPage(ctx, store.AuditFilter{}, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, evs...)
			if next.IsZero() {
				break
			}
			after = next
		}
		if len(got) != 7 || !got[0].Time.Equal(oldest) || got[1].Subject != "bob" || got[4].Subject != "alice" {
			var b strings.Builder
			for _, ev := range got {
				fmt.Fprintf(&b, "\n  %v %s %s", ev.Time, ev.Action, ev.Subject)
			}
			t.Fatalf("limit %d: %d events, want the change of 300 days ago, bob's 3 logins then alice's 3:%s", limit, len(got), b.String())
		}
	}
}
