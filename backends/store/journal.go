package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
)

// Journal bounds: a batch is one transaction; a full queue makes writers
// wait (an event that cannot wait is written to the log instead).
const (
	journalBatch    = 256
	journalQueueMax = 8192
	journalRetry    = 200 * time.Millisecond
	// journalLinger is how long the first write of a batch waits for
	// more: one login after another then shares a commit too.
	journalLinger = 10 * time.Millisecond
	// journalIdle is how long the flusher waits for a new write once the
	// queue is empty before it ends: logins a few milliseconds apart
	// then find it running instead of starting a goroutine each, whose
	// stack grows again through SQLite's deep calls on every commit.
	journalIdle = time.Second
	// journalWriteWait bounds one attempt at committing a batch (on
	// SQLite the 10 s busy_timeout bounds it as well); the retry gets a
	// wait of its own.
	journalWriteWait = 10 * time.Second
	// journalCloseWait is how long Close waits for the writes queued
	// and in flight when it is called; journalCloseGrace how long it then
	// waits for the write it cancelled to give up (PostgreSQL cancels the
	// query; SQLite's busy wait cannot be cut short) before Close writes
	// that batch to the log itself.
	journalCloseWait  = 10 * time.Second
	journalCloseGrace = 5 * time.Second
)

// Journal is a Store whose login writes — Record and RecordLogin, the
// audit event and last use of every login — are queued and committed by
// one background goroutine, many to a transaction (group commit): a
// batch is one transaction with its events and the last uses it carries
// (the latest per app password), on PostgreSQL one multi-row INSERT and
// one UPDATE, on SQLite prepared statements run once per row. A
// login then costs the store its reads only: on SQLite one commit per
// login took longer than the rest of an LDAP bind.
//
// Before each commit the flusher waits up to 10 ms for more writes, so
// that a transaction carries what was queued meanwhile (up to 256 writes);
// Flush and a full batch cut the wait short. Once the queue is empty the
// flusher waits up to 1 s for the next write before it ends, so that an
// idle Journal holds no goroutine and a busy one starts none per commit.
// The price of the batching is that a crash loses the writes of the last
// moment, the same window as SQLite's synchronous=NORMAL, and that a
// write that fails is reported in the log instead of to the login: a
// failed batch is retried once, then every event in it is written to the
// log at level ERROR, so that the trail is not silently short. A batch
// whose COMMIT got no answer is looked for before the retry, and not
// written again when the database has it, so that the trail does not
// count a login twice either.
//
// Reads through the Journal see its queued writes (Audit and
// ListAppPasswords flush first). Another process — the command line
// while serve runs — sees them once committed, normally within
// milliseconds. Flush waits for what is queued; Close flushes, then
// closes the store, and writes to the log whatever it could not commit.
// Close waits for a batch already being written too (a slow database is
// waited for, up to 10 s from the call); when the database does not
// answer, Close returns within 15 s and, before it returns, every event
// that did not reach the store is in the log, with a line that says how
// many.
//
// Every other method is the Store's own, synchronous. A Journal is safe
// for concurrent use.
type Journal struct {
	*Store
	log *slog.Logger

	mu      sync.Mutex
	queue   []journalWrite
	running bool          // a flusher goroutine is at work
	idle    bool          // the flusher waits for a write (idleFor)
	idleFor time.Duration // journalIdle; tests change it
	// closeWait and closeGrace are journalCloseWait and
	// journalCloseGrace; tests shorten them.
	closeWait, closeGrace time.Duration
	queued                uint64        // writes ever queued
	done                  uint64        // writes ever finished (committed or logged as lost)
	closed                bool          // Close has begun: writes go to the log
	lost                  uint64        // writes that went to the log instead of the store
	changed               chan struct{} // closed and replaced when done grows
	wake                  chan struct{} // cuts the flusher's linger short (Flush, a full batch)
	// inflight is the batch the flusher is committing; Close takes it
	// (sets it to nil and accounts for it) when the write does not end
	// in time, so that the flusher, once it ends, leaves it alone.
	inflight []journalWrite
	// closeLate: Close took a batch whose write had not ended, and left
	// closing the store to the flusher, once that write ends (closing
	// a statement waits for the connection that runs it).
	closeLate bool

	// stop is the parent of every write's context; Close cancels it when
	// the database has not taken the writes within journalCloseWait, so
	// that the write in flight gives up and no retry begins.
	stop       context.Context
	stopWrites context.CancelCauseFunc
}

// journalWrite is one queued write: an audit event and, for an
// app-password login, its last use.
type journalWrite struct {
	ev    AuditEvent
	touch bool
	id    int64
	use   Usage
}

// NewJournal returns a Journal writing to s. log receives write failures;
// nil discards them.
func NewJournal(s *Store, log *slog.Logger) *Journal {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop, stopWrites := context.WithCancelCause(context.Background())
	return &Journal{Store: s, log: log, idleFor: journalIdle, closeWait: journalCloseWait, closeGrace: journalCloseGrace,
		changed: make(chan struct{}), wake: make(chan struct{}, 1), stop: stop, stopWrites: stopWrites}
}

// Record queues ev for the audit trail. A zero ev.Time is the time of
// the call, not of the commit. It returns an error only when ctx ends
// while the queue is full, or after Close; the event is then in the log.
func (j *Journal) Record(ctx context.Context, ev AuditEvent) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	return j.enqueue(ctx, journalWrite{ev: ev})
}

// RecordLogin queues an app-password login: last use u of app password
// id and the audit event ev, committed together. Unlike Store.RecordLogin
// it cannot report that the app password was deleted during the login:
// the event is recorded all the same, and the session that the login
// opened is closed by revoke.Registry's revocation check.
func (j *Journal) RecordLogin(ctx context.Context, id int64, u Usage, ev AuditEvent) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	if u.At.IsZero() {
		u.At = ev.Time
	}
	return j.enqueue(ctx, journalWrite{ev: ev, touch: true, id: id, use: u})
}

func (j *Journal) enqueue(ctx context.Context, w journalWrite) error {
	j.mu.Lock()
	for len(j.queue) >= journalQueueMax && !j.closed {
		ch := j.changed
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			err := fmt.Errorf("store: audit queue full (%d writes waiting; is the database slow or down?): %w", journalQueueMax, context.Cause(ctx))
			j.logLost([]journalWrite{w}, err)
			return err
		}
		j.mu.Lock()
	}
	if j.closed {
		j.mu.Unlock()
		err := errors.New("store: audit write after shutdown began")
		j.logLost([]journalWrite{w}, err)
		return err
	}
	j.queue = append(j.queue, w)
	j.queued++
	switch {
	case !j.running:
		j.running = true
		go j.flushLoop()
	case j.idle:
		j.idle = false
		j.nudge()
	case len(j.queue) >= journalBatch:
		j.nudge()
	}
	j.mu.Unlock()
	return nil
}

// nudge wakes a lingering flusher.
func (j *Journal) nudge() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

// flushLoop commits the queue batch by batch and exits when it has been
// empty for journalIdle (at once after Close), so that an idle Journal
// holds no goroutine.
func (j *Journal) flushLoop() {
	linger := time.NewTimer(journalLinger)
	defer linger.Stop()
	for {
		j.mu.Lock()
		if len(j.queue) == 0 && !j.closed {
			j.idle = true
			idleFor := j.idleFor
			j.mu.Unlock()
			linger.Reset(idleFor)
			select {
			case <-linger.C:
			case <-j.wake:
			}
			j.mu.Lock()
			j.idle = false
		}
		if len(j.queue) > 0 && len(j.queue) < journalBatch {
			j.mu.Unlock()
			linger.Reset(journalLinger)
			select {
			case <-linger.C:
			case <-j.wake:
			}
			j.mu.Lock()
		}
		n := min(len(j.queue), journalBatch)
		if n == 0 {
			j.running = false
			j.mu.Unlock()
			return
		}
		batch := make([]journalWrite, n)
		copy(batch, j.queue)
		j.queue = append(j.queue[:0], j.queue[n:]...)
		j.inflight = batch
		j.mu.Unlock()

		err := j.commit(batch)

		// A batch that Close took meanwhile is accounted for (and in
		// the log) already.
		j.mu.Lock()
		mine := j.inflight != nil
		j.inflight = nil
		if mine && err != nil {
			j.lost += uint64(n)
		}
		closeStore := !mine && j.closeLate
		j.mu.Unlock()
		if mine && err != nil {
			j.logEvents(batch, err)
		}
		if closeStore {
			if err := j.Store.Close(); err != nil {
				j.log.LogAttrs(context.Background(), slog.LevelWarn, "audit journal: closing the store", slog.Any("err", err))
			}
		}
		j.mu.Lock()
		if mine {
			j.done += uint64(n)
			close(j.changed)
			j.changed = make(chan struct{})
		}
		j.mu.Unlock()
	}
}

// commit writes batch in one transaction, retried once, each attempt
// bounded by journalWriteWait; neither goes on once Close has cancelled
// j.stop. When the first attempt's COMMIT got no answer (the connection
// broke after it was sent), the database may have committed the batch:
// the retry first looks for it (landed), so that the trail does not
// count those logins twice.
func (j *Journal) commit(batch []journalWrite) error {
	var err error
	for attempt := range 2 {
		if attempt > 0 {
			retry := time.NewTimer(journalRetry)
			select {
			case <-retry.C:
			case <-j.stop.Done():
				retry.Stop()
				return fmt.Errorf("%w (then: %w)", err, context.Cause(j.stop))
			}
		}
		var unknown *commitUnknownError
		mayBeThere := attempt > 0 && errors.As(err, &unknown)
		if mayBeThere {
			if there, lerr := j.lookForBatch(batch, err); lerr != nil || !there {
				// Not there, or not known: written again. A duplicate
				// row is better than a login missing from the trail.
				j.log.LogAttrs(context.Background(), slog.LevelWarn, "audit journal: writing again a batch whose commit failed; if the database had committed it, its events are in the trail twice",
					slog.Int("events", len(batch)), slog.Any("err", err), slog.Any("look_err", lerr))
			} else {
				return nil
			}
		}
		ctx, cancel := context.WithTimeout(j.stop, journalWriteWait)
		err = j.write(ctx, batch)
		cancel()
		if err == nil {
			return nil
		}
		if mayBeThere {
			err = fmt.Errorf("%w (an earlier commit of these events failed without an answer: they may be stored already)", err)
		}
	}
	return err
}

// lookForBatch runs landed with a wait of its own, and logs a batch
// found committed.
func (j *Journal) lookForBatch(batch []journalWrite, cause error) (bool, error) {
	ctx, cancel := context.WithTimeout(j.stop, journalWriteWait)
	defer cancel()
	there, err := j.landed(ctx, batch)
	if err == nil && there {
		j.log.LogAttrs(context.Background(), slog.LevelWarn, "audit journal: the database had committed a batch whose commit failed; not written again",
			slog.Int("events", len(batch)), slog.Any("err", cause))
	}
	return there, err
}

// commitUnknownError is a COMMIT that failed. When the database's answer
// was lost (the connection broke after the COMMIT was sent), the
// transaction may have been committed; the driver's error does not
// always tell, so every failed COMMIT is treated as one that may have.
type commitUnknownError struct{ err error }

func (e *commitUnknownError) Error() string {
	return "store: write audit batch: commit (the database may have committed it): " + e.err.Error()
}

func (e *commitUnknownError) Unwrap() error { return e.err }

// landed reports whether batch, one transaction, is in the store: all of
// it is or none, so its first event stands for it. An event is found by
// everything it was written with but its app password's id: its time to
// the microsecond, subject, address and port, protocol, outcome and the
// rest, which no other event shares.
func (j *Journal) landed(ctx context.Context, batch []journalWrite) (bool, error) {
	var n int
	if err := j.db.GetContext(ctx, &n, j.db.Rebind(landedQuery), landedArgs(recordArgs(batch[0].ev))...); err != nil {
		return false, fmt.Errorf("store: look for an audit batch whose commit did not answer: %w", err)
	}
	return n > 0, nil
}

// logLost counts events that will not reach the store as lost and
// writes them to the log (logEvents).
func (j *Journal) logLost(batch []journalWrite, err error) {
	j.mu.Lock()
	j.lost += uint64(len(batch))
	j.mu.Unlock()
	j.logEvents(batch, err)
}

// logEvents writes events that will not reach the store to the log at
// level ERROR, one line each after a line with how many, so that the
// trail is not silently short.
func (j *Journal) logEvents(batch []journalWrite, err error) {
	ctx := context.Background()
	j.log.LogAttrs(ctx, slog.LevelError, "audit events not stored; they follow in this log",
		slog.Int("events", len(batch)), slog.Any("err", err),
		slog.String("fix", "check that the database is reachable and writable (store.dsn)"))
	for _, w := range batch {
		attrs := []slog.Attr{
			slog.Time("time", w.ev.Time), slog.String("actor", w.ev.Actor), slog.String("action", w.ev.Action),
			slog.String("subject", w.ev.Subject), slog.String("outcome", w.ev.Outcome), slog.String("detail", w.ev.Detail),
		}
		if w.touch {
			attrs = append(attrs, slog.Int64("app_password_id", w.id))
		}
		j.log.LogAttrs(ctx, slog.LevelError, "audit event not stored", attrs...)
	}
}

func (j *Journal) write(ctx context.Context, batch []journalWrite) error {
	// On SQLite without the statements' watcher goroutines (runCtx); the
	// batch's time is bounded there by busy_timeout.
	ctx, err := j.runCtx(ctx)
	if err != nil {
		return err
	}
	touchQ, err := j.hotStmt(ctx, touchQuery)
	if err != nil {
		return err
	}
	recordQ, err := j.hotStmt(ctx, recordQuery)
	if err != nil {
		return err
	}
	tx, err := j.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: write audit batch: begin: %w", err)
	}
	defer rollback(tx)
	touchT, recordT := tx.StmtxContext(ctx, touchQ), tx.StmtxContext(ctx, recordQ)
	// The batch's last uses: the latest of each app password.
	var touches []journalWrite
	last := make(map[int64]int)
	for _, w := range batch {
		if w.touch {
			if i, ok := last[w.id]; !ok {
				last[w.id] = len(touches)
				touches = append(touches, w)
			} else if !w.use.At.Before(touches[i].use.At) {
				touches[i] = w
			}
		}
		// A success's lockout change commits with its event.
		if err := applyNote(ctx, tx, w.ev.Lockout); err != nil {
			return err
		}
	}
	// SQLite runs in this process: a prepared statement executed once
	// per row costs no round trip, and less than parsing a statement of
	// as many rows as the batch has (a new text, so a new parse, for
	// every batch size). PostgreSQL gets one statement per batch: one
	// round trip instead of one per login. A lone row uses the prepared
	// statement on either.
	perRow := j.driver == DriverSQLite
	// An app password deleted since the login has no row to touch; its
	// login is recorded all the same.
	if len(touches) == 1 || perRow {
		for _, w := range touches {
			if err := touch(ctx, touchT, w.id, w.use); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
	} else if len(touches) > 1 {
		if err := j.touchMany(ctx, tx, touches); err != nil {
			return err
		}
	}
	if len(batch) == 1 || perRow {
		for _, w := range batch {
			if err := record(ctx, recordT, w.ev); err != nil {
				return err
			}
		}
	} else if err := j.recordMany(ctx, tx, batch); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return &commitUnknownError{err}
	}
	return nil
}

// touchMany records the last use of several app passwords (one write
// each) with one UPDATE joined to a list of values: like the events' INSERT,
// one round trip to PostgreSQL for the batch instead of one per login.
func (j *Journal) touchMany(ctx context.Context, tx *sqlx.Tx, touches []journalWrite) error {
	// PostgreSQL types the list from its first row; SQLite takes the
	// values as they are bound.
	first, row := "(?, ?, ?, ?, ?)", "(?, ?, ?, ?, ?)"
	if j.driver == DriverPostgres {
		first = "(?::bigint, ?::timestamptz, ?::text, ?::text, ?::text)"
	}
	var b strings.Builder
	b.WriteString("WITH v(id, at, addr, proto, client) AS (VALUES ")
	args := make([]any, 0, 5*len(touches))
	for i, w := range touches {
		if i == 0 {
			b.WriteString(first)
		} else {
			b.WriteString(", ")
			b.WriteString(row)
		}
		at := w.use.At
		if at.IsZero() {
			at = time.Now()
		}
		args = append(args, w.id, dbTime(at), cleanText(w.use.Addr, maxUsageField), cleanText(w.use.Proto, maxUsageField), cleanText(w.use.Client, maxUsageField))
	}
	b.WriteString(`) UPDATE app_passwords SET last_used_at = v.at, last_used_addr = v.addr, last_used_proto = v.proto, last_used_client = v.client
		FROM v WHERE app_passwords.id = v.id`)
	if _, err := tx.ExecContext(ctx, tx.Rebind(b.String()), args...); err != nil {
		return fmt.Errorf("store: record the last use of %d app passwords: %w", len(touches), err)
	}
	return nil
}

// recordMany inserts the events of batch with one statement.
func (j *Journal) recordMany(ctx context.Context, tx *sqlx.Tx, batch []journalWrite) error {
	head, row, _ := strings.Cut(recordQuery, " VALUES ")
	var b strings.Builder
	b.WriteString(head)
	b.WriteString(" VALUES ")
	args := make([]any, 0, len(batch)*strings.Count(row, "?"))
	for i, w := range batch {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
		args = append(args, recordArgs(w.ev)...)
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(b.String()), args...); err != nil {
		return fmt.Errorf("store: write audit batch of %d events: %w", len(batch), err)
	}
	return nil
}

// Pending returns how many writes wait to be committed.
func (j *Journal) Pending() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return int(j.queued - j.done)
}

// Lost returns how many writes went to the log because the store refused
// them (or could not be waited for).
func (j *Journal) Lost() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lost
}

// Flush waits until every write queued before the call is committed (or
// logged as lost), or until ctx ends.
func (j *Journal) Flush(ctx context.Context) error {
	j.mu.Lock()
	target := j.queued
	if j.done < target {
		j.nudge()
	}
	for j.done < target {
		ch := j.changed
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("store: flush audit queue: %w", context.Cause(ctx))
		}
		j.mu.Lock()
	}
	j.mu.Unlock()
	return nil
}

// Audit flushes the queue, then reads the audit trail (Store.Audit).
func (j *Journal) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	if err := j.Flush(ctx); err != nil {
		return nil, err
	}
	return j.Store.Audit(ctx, f)
}

// AuditPage flushes the queue, then reads one page of the audit trail
// (Store.AuditPage), so that a page includes the logins already decided.
func (j *Journal) AuditPage(ctx context.Context, f AuditFilter, after AuditCursor, limit int) ([]AuditEvent, AuditCursor, error) {
	if err := j.Flush(ctx); err != nil {
		return nil, AuditCursor{}, err
	}
	return j.Store.AuditPage(ctx, f, after, limit)
}

// ListAppPasswords flushes the queue, so that last use is current, then
// lists (Store.ListAppPasswords).
func (j *Journal) ListAppPasswords(ctx context.Context, user string) ([]AppPassword, error) {
	if err := j.Flush(ctx); err != nil {
		return nil, err
	}
	return j.Store.ListAppPasswords(ctx, user)
}

// Close flushes the queue and closes the store. It waits up to 10 s for
// every write queued before the call, including a batch the flusher is
// writing already. If the database has not taken them by then, Close
// cancels the write in flight and waits up to 5 s more for it to give
// up; whatever is still unwritten then is written to the log by Close
// itself, so that when Close returns every event accepted before it is
// either in the store or in the log, and a line at level ERROR says how
// many went to the log. A write that has not given up by then keeps the
// store open until it does (Close does not wait for it). Writes from the
// call on are refused (Record returns an error) and go to the log:
// Close waits for every write accepted before it, and only for those.
func (j *Journal) Close() error {
	j.mu.Lock()
	lostBefore, wait, graceFor := j.lost, j.closeWait, j.closeGrace
	// From now on a write goes to the log (and its caller gets an
	// error): Close waits for the writes accepted before, and for no
	// others, so that none of them is left in the queue behind a write
	// that came later.
	j.closed = true
	if j.idle {
		j.nudge() // an idle flusher ends now
	}
	j.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ferr := j.Flush(ctx)
	if ferr != nil {
		j.stopWrites(fmt.Errorf("store: the database did not take the audit writes within %v of shutdown", wait))
		grace, cancel := context.WithTimeout(context.Background(), graceFor)
		_ = j.Flush(grace) // the cancelled write gives up and logs its batch
		cancel()
	}
	j.mu.Lock()
	rest := slices.Concat(j.inflight, j.queue)
	j.closeLate = len(j.inflight) > 0
	closeLate := j.closeLate
	j.inflight, j.queue = nil, nil
	j.done += uint64(len(rest))
	close(j.changed)
	j.changed = make(chan struct{})
	j.mu.Unlock()
	if len(rest) > 0 {
		// rest is not empty only when the flush ran out of time.
		j.logLost(rest, fmt.Errorf("store: not written before shutdown: %w", cmp.Or(ferr, errors.New("the flusher did not finish"))))
	}
	j.mu.Lock()
	lost := j.lost - lostBefore
	j.mu.Unlock()
	if lost > 0 {
		j.log.LogAttrs(context.Background(), slog.LevelError, "audit journal closed with events not stored; each is in this log",
			slog.Uint64("events", lost), slog.Any("err", ferr),
			slog.String("fix", "check that the database is reachable and writable (store.dsn)"))
	}
	if closeLate {
		return ferr // the flusher closes the store when its write ends
	}
	if err := j.Store.Close(); err != nil {
		return err
	}
	return ferr
}
