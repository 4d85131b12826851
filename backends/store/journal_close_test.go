package store_test

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// writeLock holds the lock that the Journal's next batch needs, from
// another connection, until release: on SQLite the database's write
// lock (BEGIN IMMEDIATE), on PostgreSQL an EXCLUSIVE lock on
// audit_events (reads go on, INSERTs wait).
type writeLock struct {
	db   *sql.DB
	conn *sql.Conn
}

func holdWriteLock(t *testing.T, f *fixture) *writeLock {
	t.Helper()
	ctx := ctxT(t)
	driver := "sqlite"
	if f.driver == store.DriverPostgres {
		driver = "postgres"
	}
	db, err := sql.Open(driver, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stmts := []string{"BEGIN IMMEDIATE"}
	if f.driver == store.DriverPostgres {
		stmts = []string{"BEGIN", "LOCK TABLE audit_events IN EXCLUSIVE MODE"}
	}
	for _, q := range stmts {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("hold the write lock: %s: %v", q, err)
		}
	}
	l := &writeLock{db: db, conn: conn}
	t.Cleanup(l.release)
	return l
}

// release ends the lock's transaction; it may be called more than once.
func (l *writeLock) release() {
	if l.conn == nil {
		return
	}
	_, _ = l.conn.ExecContext(context.Background(), "ROLLBACK")
	_ = l.conn.Close()
	_ = l.db.Close()
	l.conn = nil
}

// waitInFlight waits until a batch of j's writes has left the queue for
// the flusher, which the lock then holds, and returns its size. The
// size depends on how many writes were queued when the flusher's 10 ms
// linger ended (all 256 of a full batch on a quiet machine, fewer when
// the writer was slow), and none of the tests depends on it: the rest
// wait in the queue behind it either way.
func waitInFlight(t *testing.T, j *store.Journal) int {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		if n := store.JournalInFlight(j); n > 0 {
			t.Logf("%d writes in flight, %d queued behind them", n, j.Pending()-n)
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 1 min, no write has left the queue (%d queued)", j.Pending())
		}
	}
}

// storedDetails returns the details of user's events committed to f's
// database, read through a store of its own (the Journal's is closed).
// It reads the table itself, with SQL of its own: a count that does not
// depend on the store's paging.
func storedDetails(t *testing.T, f *fixture, user string) map[string]bool {
	t.Helper()
	driver, q := "sqlite", "SELECT detail FROM audit_events WHERE subject = ?"
	if f.driver == store.DriverPostgres {
		driver, q = "postgres", "SELECT detail FROM audit_events WHERE subject = $1"
	}
	db, err := sql.Open(driver, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctxT(t), q, user)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		out[d] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// testJournalCloseSlowWrite: a batch that has left the queue and waits
// for a lock held elsewhere (a slow database, not a dead one) is waited
// for by Close, even when the batch began long before Close: every event
// accepted before Close is in the table afterwards and none in the log.
// The write began 7 s before Close and the lock is released 11 s after
// the write began, so that neither the write's own time limit (10 s,
// counted from its start) nor Close's (10 s from the call) may cut it.
func testJournalCloseSlowWrite(t *testing.T, f *fixture) {
	j, logs := f.journal(t)
	lock := holdWriteLock(t, f)
	const n = 300 // a batch in flight (a full one of 256 when the writer is quick), the rest queued behind it
	for i := range n {
		if err := j.Record(context.Background(), loginEvent("grace", "success", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitInFlight(t, j)
	began := time.Now()
	time.Sleep(7 * time.Second)
	closed := make(chan error, 1)
	go func() { closed <- j.Close() }()
	time.Sleep(time.Until(began.Add(11 * time.Second)))
	lock.release()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close after a slow write: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Close has not returned 2 min after the lock was released")
	}
	got := storedDetails(t, f, "grace")
	var missing []string
	for i := range n {
		if d := fmt.Sprintf("n=%d", i); !got[d] {
			missing = append(missing, d)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d events accepted before Close are not in the table (first %s); log:\n%.2000s", len(missing), n, missing[0], logs.String())
	}
	if out := logs.String(); strings.Contains(out, "not stored") {
		t.Errorf("the log reports events not stored, though the database came back within Close's wait:\n%.2000s", out)
	}
}

// testJournalCloseDeadStore: when the database does not come back,
// Close returns within its bound, and by then the log accounts for every
// event not in the table: a line with how many, one line per event,
// Lost counts them, and the store holds exactly the others (checked
// once the lock is gone). With Close's own waits (10 s, then 5 s) the
// write in flight gives up in time (PostgreSQL's is cancelled, SQLite's
// busy wait ends at 10 s); with waits of 1 s Close gives up on a write
// still waiting on SQLite and logs its batch itself.
func testJournalCloseDeadStore(t *testing.T, f *fixture) {
	for _, tc := range []struct {
		name        string
		wait, grace time.Duration // zero: Close's own
	}{
		{"close-waits", 0, 0},
		{"short-waits", time.Second, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closeDeadStore(t, f, tc.wait, tc.grace)
		})
	}
}

func closeDeadStore(t *testing.T, f *fixture, wait, grace time.Duration) {
	j, logs := f.journal(t)
	if wait > 0 {
		store.SetJournalCloseWaits(j, wait, grace)
	}
	lock := holdWriteLock(t, f)
	const n = 300
	for i := range n {
		if err := j.Record(context.Background(), loginEvent("henry", "success", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitInFlight(t, j)
	start := time.Now()
	closed := make(chan error, 1)
	go func() { closed <- j.Close() }()
	select {
	case err := <-closed:
		if err == nil {
			t.Error("Close with the database locked returned no error")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Close has not returned after 2 min with the database locked: unbounded")
	}
	took := time.Since(start)
	t.Logf("Close returned after %v: %v", took, j.Lost())
	out := logs.String() // what the log said by the time Close returned
	lost := j.Lost()
	lock.release()

	logged := map[string]bool{}
	for _, m := range regexp.MustCompile(`msg="audit event not stored".* detail="(n=\d+)"`).FindAllStringSubmatch(out, -1) {
		logged[m[1]] = true
	}
	if lost != uint64(len(logged)) {
		t.Errorf("Lost() = %d, but the log lists %d events when Close returns (after %v)", lost, len(logged), took)
	}
	if !regexp.MustCompile(fmt.Sprintf(`events=%d\b`, lost)).MatchString(out) {
		t.Errorf("no log line says how many events (%d) were lost:\n%.3000s", lost, out)
	}
	// A process ends when Close returns: what is neither in the table
	// nor in the log by then is lost silently. Give a write that Close
	// gave up on time to land, then look.
	time.Sleep(2 * time.Second)
	stored := storedDetails(t, f, "henry")
	if len(stored)+len(logged) < n {
		t.Errorf("%d events stored, %d logged: want all %d in one or the other", len(stored), len(logged), n)
	}
	var silent []string
	for i := range n {
		if d := fmt.Sprintf("n=%d", i); !stored[d] && !logged[d] {
			silent = append(silent, d)
		}
	}
	if len(silent) > 0 {
		t.Errorf("%d of %d events neither stored nor in the log when Close returned (after %v; first %s)", len(silent), n, took, silent[0])
	}
}

// testJournalCloseConcurrentWriters: writers that keep recording while
// Close runs: every write that Record accepted (returned nil for) is in
// the table afterwards, and the one write of each writer that Record
// refused (Close had begun) is in the log and counted as lost, not in
// the table.
func testJournalCloseConcurrentWriters(t *testing.T, f *fixture) {
	for round := range 3 {
		j, logs := f.journal(t)
		// What is checked is where each event ends up, not how fast:
		// the writers may have queued thousands of events by the time
		// Close begins, which a loaded machine (and the race detector)
		// may take longer than Close's 10 s to commit.
		store.SetJournalCloseWaits(j, 10*time.Minute, 5*time.Second)
		user := fmt.Sprintf("ivan%d", round)
		const writers = 4
		accepted := make([][]string, writers)
		refused := make([]string, writers)
		started := make(chan struct{}, writers)
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					ev := loginEvent(user, "success", w*1_000_000+i)
					if err := j.Record(context.Background(), ev); err != nil {
						refused[w] = ev.Detail
						return
					}
					accepted[w] = append(accepted[w], ev.Detail)
					if i == 50 {
						started <- struct{}{}
					}
				}
			}()
		}
		for range writers {
			<-started
		}
		if err := j.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		wg.Wait()
		stored := storedDetails(t, f, user)
		out := logs.String()
		total := 0
		for w := range writers {
			total += len(accepted[w])
			for _, d := range accepted[w] {
				if !stored[d] {
					t.Fatalf("round %d: event %s was accepted before Close but is not in the table (%d of %d accepted stored, %d lost); log:\n%.2000s",
						round, d, len(stored), total, j.Lost(), out)
				}
			}
			if stored[refused[w]] || !strings.Contains(out, fmt.Sprintf(`detail="%s"`, refused[w])) {
				t.Fatalf("round %d: the refused write %s: stored %v, want only in the log:\n%.2000s", round, refused[w], stored[refused[w]], out)
			}
		}
		if lost := j.Lost(); lost != writers {
			t.Fatalf("round %d: Lost() = %d, want %d (one refused write per writer); log:\n%.2000s", round, lost, writers, out)
		}
	}
}
