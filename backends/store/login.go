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
	// nil when none matches. Scope, expiry and the switch are not checked
	// here: the caller (policy) does.
	AppPassword *AppPassword
}

// loginQuery reads a login's three facts in one statement: one read
// transaction instead of three, which on SQLite is most of a login's
// cost in the store. The LEFT JOINs on a one-row table give one row
// whatever exists.
const loginQuery = `SELECT u.mfa AS mfa, u.name AS stored_name, s.value AS allow_setting,
 a.id AS id, a.user_name AS user_name, a.label AS label, a.scopes AS scopes, a.hash AS hash,
 a.created_at AS created_at, a.expires_at AS expires_at, a.last_used_at AS last_used_at,
 a.last_used_addr AS last_used_addr, a.last_used_proto AS last_used_proto, a.last_used_client AS last_used_client,
 a.networks AS networks
FROM (SELECT 1 AS one) AS one
LEFT JOIN users u ON u.name_key = ?
LEFT JOIN settings s ON s.name = ?
LEFT JOIN app_passwords a ON a.user_key = ? AND a.hash = ?`

// loginRow is loginQuery's row (Scan fills it in column order, dest):
// every column may be NULL.
type loginRow struct {
	MFA            sql.NullString `db:"mfa"`
	StoredName     sql.NullString `db:"stored_name"`
	Allow          sql.NullString `db:"allow_setting"`
	ID             sql.NullInt64  `db:"id"`
	User           sql.NullString `db:"user_name"`
	Label          sql.NullString `db:"label"`
	Scopes         sql.NullString `db:"scopes"`
	Hash           []byte         `db:"hash"`
	CreatedAt      sql.NullTime   `db:"created_at"`
	ExpiresAt      sql.NullTime   `db:"expires_at"`
	LastUsedAt     sql.NullTime   `db:"last_used_at"`
	LastUsedAddr   sql.NullString `db:"last_used_addr"`
	LastUsedProto  sql.NullString `db:"last_used_proto"`
	LastUsedClient sql.NullString `db:"last_used_client"`
	Networks       sql.NullString `db:"networks"`
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
	return []any{&r.MFA, &r.StoredName, &r.Allow, &r.ID, &r.User, &r.Label, &r.Scopes, &r.Hash,
		&r.CreatedAt, &r.ExpiresAt, &r.LastUsedAt, &r.LastUsedAddr, &r.LastUsedProto, &r.LastUsedClient, &r.Networks}
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
			CreatedAt: r.CreatedAt.Time, ExpiresAt: r.ExpiresAt, LastUsedAt: r.LastUsedAt,
			LastUsedAddr: r.LastUsedAddr.String, LastUsedProto: r.LastUsedProto.String, LastUsedClient: r.LastUsedClient.String,
			Networks: r.Networks.String,
		}.appPassword()
		ls.AppPassword = &a
	}
	return ls
}

// loginLockoutQuery is loginQuery joined with lockoutStateQuery's rows,
// one LEFT JOIN each (every join is on a primary key, so there is still
// one row): a login's reads in one statement, one read transaction.
const loginLockoutQuery = `SELECT u.mfa, u.name, s.value,
 a.id, a.user_name, a.label, a.scopes, a.hash, a.created_at, a.expires_at, a.last_used_at,
 a.last_used_addr, a.last_used_proto, a.last_used_client, a.networks,
 cp.failures, cp.window_start, cp.locked_until, cp.locks, cp.recent,
 ca.failures, ca.window_start, ca.locked_until, ca.locks, ca.recent,
 cu.failures, cu.window_start, cu.locked_until, cu.locks, cu.recent,
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

func (c *counterCols) dest() []any {
	return []any{&c.failures, &c.start, &c.until, &c.locks, &c.recent}
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
// the store before its outcome, in one read instead of two. An invalid
// user name is an error matching ErrInvalid, before anything is read.
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
	q, err := s.hotStmt(ctx, loginLockoutQuery)
	if err != nil {
		return LockoutState{}, LoginState{}, err
	}
	var (
		r             loginRow
		pair, ad, usr counterCols
		seen          sql.NullInt64
	)
	dest := append(append(append(append(r.dest(), pair.dest()...), ad.dest()...), usr.dest()...), &seen)
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
