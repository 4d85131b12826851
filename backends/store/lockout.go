package store

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"time"

	"github.com/jmoiron/sqlx"
)

// purposeLockoutTag derives the key of the lockout's secret tags.
const purposeLockoutTag = "lockout tag v1"

// LockoutTagSize is the length of a tag, in bytes.
const LockoutTagSize = 16

// maxFamiliar bounds the familiar addresses kept per user: the oldest go.
const maxFamiliar = 64

// LockoutCounter is one row of the shared lockout: a (user, address)
// pair when both are set, an address when User is empty, a user when
// Addr is empty. The store counts; the rules (thresholds, durations)
// belong to the caller (policy).
type LockoutCounter struct {
	User, Addr  string
	Failures    int       // in the window that started at WindowStart
	WindowStart time.Time // zero: no row
	LockedUntil time.Time
	Locks       int    // lockouts in a row
	Recent      []byte // tags of the last wrong secrets, newest first
}

// LockoutState is what one login needs to know of the lockout, read in
// one query.
type LockoutState struct {
	Pair, Addr, User LockoutCounter
	// FamiliarSeen is when the user last logged in from the address;
	// zero when never (or forgotten).
	FamiliarSeen time.Time
}

// LockoutNote is what a successful login changes in the lockout. It
// rides on the audit event of the success (AuditEvent.Lockout), so that
// it costs no write of its own: Record, RecordLogin and the Journal
// apply it in the same transaction.
type LockoutNote struct {
	User, Addr string
	At         time.Time
	// ClearPair forgets the pair's failures and lockouts (set only when
	// there were some).
	ClearPair bool
	// Familiar records At as the last success from Addr, for User and,
	// when set, AlsoFamiliar (a second name of the same user: the
	// lockout's name for her portal codes).
	Familiar     bool
	AlsoFamiliar string
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// LockoutTag returns the keyed hash under which a wrong secret of user
// from addr is remembered (never the secret): HMAC-SHA-256 under a key
// derived from the server key, cut to LockoutTagSize bytes.
func (s *Store) LockoutTag(user, addr, secret string) ([]byte, error) {
	k, err := s.loadedKeys()
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, k.lockoutTag)
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(addr))
	m.Write([]byte{0})
	m.Write([]byte(secret))
	return m.Sum(nil)[:LockoutTagSize], nil
}

const lockoutStateQuery = `SELECT user_key, addr, failures, window_start, locked_until, locks, recent FROM lockout_counters
WHERE (user_key = ? AND addr = ?) OR (user_key = '' AND addr = ?) OR (user_key = ? AND addr = '')
UNION ALL SELECT user_key, addr, -1, last_seen, 0, 0, NULL FROM familiar_addresses WHERE user_key = ? AND addr = ?`

// LockoutState reads the counters of (user, addr), of addr and of user,
// and when user last logged in from addr, in one query. user and addr
// are the caller's keys (policy folds case and IPv6 /64s).
func (s *Store) LockoutState(ctx context.Context, user, addr string) (LockoutState, error) {
	ctx, err := s.runCtx(ctx)
	if err != nil {
		return LockoutState{}, err
	}
	q, err := s.hotStmt(ctx, lockoutStateQuery)
	if err != nil {
		return LockoutState{}, err
	}
	rows, err := q.QueryContext(ctx, user, addr, addr, user, user, addr)
	if err != nil {
		return LockoutState{}, fmt.Errorf("store: read the lockout of %q from %s: %w", user, addr, err)
	}
	defer rows.Close()
	var st LockoutState
	for rows.Next() {
		var c LockoutCounter
		var start, until int64
		if err := rows.Scan(&c.User, &c.Addr, &c.Failures, &start, &until, &c.Locks, &c.Recent); err != nil {
			return LockoutState{}, fmt.Errorf("store: read the lockout of %q from %s: %w", user, addr, err)
		}
		c.WindowStart, c.LockedUntil = fromMicros(start), fromMicros(until)
		switch {
		case c.Failures < 0:
			st.FamiliarSeen = c.WindowStart
		case c.User == "":
			st.Addr = c
		case c.Addr == "":
			st.User = c
		default:
			st.Pair = c
		}
	}
	if err := rows.Err(); err != nil {
		return LockoutState{}, fmt.Errorf("store: read the lockout of %q from %s: %w", user, addr, err)
	}
	return st, nil
}

const addFailureQuery = `INSERT INTO lockout_counters AS c (user_key, addr, failures, window_start, locked_until, locks, recent)
VALUES (?, ?, 1, ?, 0, 0, ?)
ON CONFLICT (user_key, addr) DO UPDATE SET
  failures = CASE WHEN c.window_start < ? THEN 1 ELSE c.failures + 1 END,
  window_start = CASE WHEN c.window_start < ? THEN excluded.window_start ELSE c.window_start END,
  locks = CASE WHEN c.locked_until < ? THEN 0 ELSE c.locks END,
  recent = COALESCE(excluded.recent, c.recent)
RETURNING failures, locks`

// AddFailure counts one failure under (user, addr) at now, atomically
// (every instance may count at once), and returns the counter as it is
// then. A window that started before windowFrom starts again at now;
// lockouts that ended before locksFrom are forgotten. A non-nil recent
// replaces the remembered tags.
//
// Unlike the login's read it runs under ctx itself, cancellation and
// deadline included, on SQLite too: the caller bounds a failure's writes
// (policy's write context), and a write may wait for SQLite's lock.
func (s *Store) AddFailure(ctx context.Context, user, addr string, now, windowFrom, locksFrom time.Time, recent []byte) (LockoutCounter, error) {
	q, err := s.hotStmt(ctx, addFailureQuery)
	if err != nil {
		return LockoutCounter{}, err
	}
	c := LockoutCounter{User: user, Addr: addr, Recent: recent}
	var rec any
	if recent != nil {
		rec = recent
	}
	if err := q.QueryRowxContext(ctx, user, addr, micros(now), rec, micros(windowFrom), micros(windowFrom), micros(locksFrom)).
		Scan(&c.Failures, &c.Locks); err != nil {
		return LockoutCounter{}, fmt.Errorf("store: count a failure of %q from %q: %w", user, addr, err)
	}
	return c, nil
}

const lockQuery = `UPDATE lockout_counters SET locked_until = ?, locks = locks + 1, failures = 0, window_start = ? WHERE user_key = ? AND addr = ?`

// Lock locks (user, addr) until until, counts one more lockout in a row
// and starts a new window at now.
// Like AddFailure it runs under ctx itself.
func (s *Store) Lock(ctx context.Context, user, addr string, now, until time.Time) error {
	q, err := s.hotStmt(ctx, lockQuery)
	if err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, micros(until), micros(now), user, addr); err != nil {
		return fmt.Errorf("store: lock %q from %q: %w", user, addr, err)
	}
	return nil
}

// PruneLockout deletes counters whose window started before idleBefore
// and that lock nothing at now, and familiar addresses last seen before
// familiarBefore. It returns how many rows went.
func (s *Store) PruneLockout(ctx context.Context, now, idleBefore, familiarBefore time.Time) (int64, error) {
	r1, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM lockout_counters WHERE window_start < ? AND locked_until < ?`), micros(idleBefore), micros(now))
	if err != nil {
		return 0, fmt.Errorf("store: prune the lockout: %w", err)
	}
	r2, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM familiar_addresses WHERE last_seen < ?`), micros(familiarBefore))
	if err != nil {
		return 0, fmt.Errorf("store: prune familiar addresses: %w", err)
	}
	n1, _ := r1.RowsAffected()
	n2, _ := r2.RowsAffected()
	return n1 + n2, nil
}

// applyNote applies a success's lockout note within tx.
func applyNote(ctx context.Context, tx *sqlx.Tx, n *LockoutNote) error {
	if n == nil {
		return nil
	}
	if n.ClearPair {
		if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM lockout_counters WHERE user_key = ? AND addr = ?`), n.User, n.Addr); err != nil {
			return fmt.Errorf("store: forget the failures of %q from %s: %w", n.User, n.Addr, err)
		}
	}
	if !n.Familiar {
		return nil
	}
	at := n.At
	if at.IsZero() {
		at = time.Now()
	}
	for _, fu := range []string{n.User, n.AlsoFamiliar} {
		if fu == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO familiar_addresses (user_key, addr, last_seen) VALUES (?, ?, ?)
ON CONFLICT (user_key, addr) DO UPDATE SET last_seen = excluded.last_seen`), fu, n.Addr, micros(at)); err != nil {
			return fmt.Errorf("store: remember %s as familiar for %q: %w", n.Addr, fu, err)
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM familiar_addresses WHERE user_key = ? AND addr NOT IN
(SELECT addr FROM familiar_addresses WHERE user_key = ? ORDER BY last_seen DESC LIMIT ?)`), fu, fu, maxFamiliar); err != nil {
			return fmt.Errorf("store: forget old familiar addresses of %q: %w", fu, err)
		}
	}
	return nil
}
