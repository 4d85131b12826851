package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/passgate/passgate/backends/apppass"
)

// LoginState is what the decision needs of the store for one login.
type LoginState struct {
	// MFA is the user's state, or Options.DefaultMFA for a user without
	// a row.
	MFA MFAState
	// User is the user's name as stored, "" for a user without a row.
	User string
	// AllowAppPasswords is the global switch (default true).
	AllowAppPasswords bool
	// AppPassword is the user's app password whose secret was presented,
	// nil when none matches, with what a decision reads of it: ID, User,
	// Label, Scopes, ExpiresAt, Networks and Hash (not CreatedAt nor its
	// last use, which ListAppPasswords gives). Scope, expiry and the
	// switch are not checked here: the caller (policy) does.
	AppPassword *AppPassword
}

// loginQuery reads a login's three facts in one statement: one read
// transaction instead of three, which on SQLite is most of a login's
// cost in the store. The LEFT JOINs on a one-row table give one row
// whatever exists. Of the app password it reads only what a decision
// uses (loginAppColumns): every column costs the SQLite driver its name,
// its declared type and a conversion on every query, and a time column
// a parse.
const loginQuery = `SELECT u.mfa, u.name, s.value, ` + loginAppColumns + `
FROM (SELECT 1 AS one) AS one
LEFT JOIN users u ON u.name_key = ?
LEFT JOIN settings s ON s.name = ?
LEFT JOIN app_passwords a ON a.user_key = ? AND a.hash = ?`

// loginAppColumns are the app password's columns that a login reads.
const loginAppColumns = `a.id, a.user_name, a.label, a.scopes, a.hash, a.expires_at, a.networks`

// loginRow is loginQuery's row (Scan fills it in column order, dest):
// every column may be NULL.
type loginRow struct {
	MFA        sql.NullString
	StoredName sql.NullString
	Allow      sql.NullString
	ID         sql.NullInt64
	User       sql.NullString
	Label      sql.NullString
	Scopes     sql.NullString
	Hash       []byte
	ExpiresAt  sql.NullTime
	Networks   sql.NullString
}

// LoginState reads, in one query, the user's MFA state, the global
// switch and the user's app password whose secret is secret (spaces and
// case ignored; found by keyed hash, compared in constant time). A
// secret that cannot be an app password is hashed and looked up all the
// same, so that timing does not tell it apart. An invalid user name is
// an error matching ErrInvalid.
func (s *Store) LoginState(ctx context.Context, user, secret string) (LoginState, error) {
	key, err := userKey(user)
	if err != nil {
		return LoginState{}, err
	}
	h, err := s.key()
	if err != nil {
		return LoginState{}, err
	}
	want := h.Hash(key, secret)
	if ctx, err = s.runCtx(ctx); err != nil {
		return LoginState{}, err
	}
	q, err := s.hotStmt(ctx, loginQuery)
	if err != nil {
		return LoginState{}, err
	}
	var r loginRow
	if err := q.QueryRowxContext(ctx, key, settingAllowAppPasswords, key, want).Scan(r.dest()...); err != nil {
		return LoginState{}, fmt.Errorf("store: read login state of %s: %w", user, err)
	}
	return s.loginState(r, want), nil
}

// dest is where Scan puts loginQuery's columns, in their order.
func (r *loginRow) dest() []any {
	return []any{&r.MFA, &r.StoredName, &r.Allow, &r.ID, &r.User, &r.Label, &r.Scopes, &r.Hash, &r.ExpiresAt, &r.Networks}
}

// loginState turns loginQuery's row into a LoginState; want is the keyed
// hash of the presented secret.
func (s *Store) loginState(r loginRow, want []byte) LoginState {
	ls := LoginState{MFA: s.defaultMFA, AllowAppPasswords: !r.Allow.Valid || r.Allow.String == "true"}
	if r.MFA.Valid {
		ls.MFA = MFAState(r.MFA.String)
		ls.User = r.StoredName.String
	}
	if r.ID.Valid && apppass.Equal(r.Hash, want) {
		a := appRow{
			ID: r.ID.Int64, User: r.User.String, Label: r.Label.String, Scopes: r.Scopes.String, Hash: r.Hash,
			ExpiresAt: r.ExpiresAt, Networks: r.Networks.String,
		}.appPassword()
		ls.AppPassword = &a
	}
	return ls
}

// loginLockoutQuery is loginQuery joined with lockoutStateQuery's rows,
// one LEFT JOIN each (every join is on a primary key, so there is still
// one row): a login's reads in one statement, one read transaction. Of
// the address's and the user's counters it reads what the rules use
// (failures, window, lock), not their lockouts in a row nor tags (an
// address's or a user's counter has none).
const loginLockoutQuery = `SELECT u.mfa, u.name, s.value, ` + loginAppColumns + `,
 cp.failures, cp.window_start, cp.locked_until, cp.locks, cp.recent,
 ca.failures, ca.window_start, ca.locked_until,
 cu.failures, cu.window_start, cu.locked_until,
 f.last_seen
FROM (SELECT 1 AS one) AS one
LEFT JOIN users u ON u.name_key = ?
LEFT JOIN settings s ON s.name = ?
LEFT JOIN app_passwords a ON a.user_key = ? AND a.hash = ?
LEFT JOIN lockout_counters cp ON cp.user_key = ? AND cp.addr = ?
LEFT JOIN lockout_counters ca ON ca.user_key = '' AND ca.addr = ?
LEFT JOIN lockout_counters cu ON cu.user_key = ? AND cu.addr = ''
LEFT JOIN familiar_addresses f ON f.user_key = ? AND f.addr = ?`

// counterCols is one lockout counter of loginLockoutQuery, NULL when it
// has no row.
type counterCols struct {
	failures, start, until, locks sql.NullInt64
	recent                        []byte
}

// dest is where Scan puts a counter's columns: with its lockouts in a
// row and tags (the pair) or without (the address, the user).
func (c *counterCols) dest(full bool) []any {
	if full {
		return []any{&c.failures, &c.start, &c.until, &c.locks, &c.recent}
	}
	return []any{&c.failures, &c.start, &c.until}
}

// counter is the LockoutCounter of (user, addr) as LockoutState gives it.
func (c *counterCols) counter(user, addr string) LockoutCounter {
	if !c.failures.Valid {
		return LockoutCounter{}
	}
	return LockoutCounter{User: user, Addr: addr, Failures: int(c.failures.Int64),
		WindowStart: fromMicros(c.start.Int64), LockedUntil: fromMicros(c.until.Int64),
		Locks: int(c.locks.Int64), Recent: c.recent}
}

// LoginLockoutState is LockoutState(lockUser, lockAddr) and
// LoginState(user, secret) read in one statement: what a login needs of
// the store before its outcome, in one read instead of two. The
// address's and the user's counters come without Locks and Recent,
// which the lockout's rules read of the pair only. An invalid user name
// is an error matching ErrInvalid, before anything is read.
func (s *Store) LoginLockoutState(ctx context.Context, lockUser, lockAddr, user, secret string) (LockoutState, LoginState, error) {
	key, err := userKey(user)
	if err != nil {
		return LockoutState{}, LoginState{}, err
	}
	h, err := s.key()
	if err != nil {
		return LockoutState{}, LoginState{}, err
	}
	want := h.Hash(key, secret)
	if ctx, err = s.runCtx(ctx); err != nil {
		return LockoutState{}, LoginState{}, err
	}
	q, err := s.hotStmt(ctx, loginLockoutQuery)
	if err != nil {
		return LockoutState{}, LoginState{}, err
	}
	var (
		r             loginRow
		pair, ad, usr counterCols
		seen          sql.NullInt64
	)
	dest := append(append(append(append(r.dest(), pair.dest(true)...), ad.dest(false)...), usr.dest(false)...), &seen)
	if err := q.QueryRowxContext(ctx, key, settingAllowAppPasswords, key, want,
		lockUser, lockAddr, lockAddr, lockUser, lockUser, lockAddr).Scan(dest...); err != nil {
		return LockoutState{}, LoginState{}, fmt.Errorf("store: read the login and lockout state of %s from %s: %w", user, lockAddr, err)
	}
	st := LockoutState{Pair: pair.counter(lockUser, lockAddr), Addr: ad.counter("", lockAddr), User: usr.counter(lockUser, "")}
	if seen.Valid {
		st.FamiliarSeen = fromMicros(seen.Int64)
	}
	return st, s.loginState(r, want), nil
}

// Backing returns the Store itself: a Journal, which embeds it, returns
// the Store it writes to, so that a caller holding both can tell that
// they read the same database.
func (s *Store) Backing() *Store { return s }
