package store

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// UserSummary is a row of the Active users list: the user, the admin
// flag, the number of app passwords and the last time one was used.
type UserSummary struct {
	User
	Admin        bool       `json:"admin"`
	AppPasswords int        `json:"app_passwords"`
	LastSignIn   *time.Time `json:"last_sign_in,omitempty"`
}

// UserQuery selects a page of users, ordered by lower-cased name.
type UserQuery struct {
	After  string // keyset cursor: names after this one (ignoring case)
	Search string // a substring of the name, ignoring case
	Name   string // exactly this name, ignoring case
	Limit  int    // 1-1000; 0 means 50
}

// MaxPage is the largest page any listing returns.
const MaxPage = 1000

func pageLimit(n int) int {
	switch {
	case n <= 0:
		return 50
	case n > MaxPage:
		return MaxPage
	}
	return n
}

// likePattern escapes s for LIKE ... ESCAPE '\'.
func likePattern(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return "%" + r.Replace(strings.ToLower(s)) + "%"
}

type summaryRow struct {
	userRow
	Admin    bool    `db:"admin"`
	Count    int     `db:"app_count"`
	LastUsed aggTime `db:"last_used"`
}

// aggTime scans MAX() of a timestamp column: SQLite returns the stored
// text, as an aggregate loses the column's declared type.
type aggTime struct {
	Time  time.Time
	Valid bool
}

// Scan implements sql.Scanner.
func (a *aggTime) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		a.Valid = false
		return nil
	case time.Time:
		a.Time, a.Valid = x, true
		return nil
	case []byte:
		v = string(x)
	}
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("store: cannot read %T as a time", v)
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999-07:00", time.RFC3339Nano, "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			a.Time, a.Valid = t, true
			return nil
		}
	}
	return fmt.Errorf("store: cannot read %q as a time", s)
}

// ListUserPage returns one page of users with their number of app
// passwords and last app-password use, in one query: keyset paging on the
// users primary key (name_key) and an aggregate over the index
// app_passwords_user_used, never a query per user. The page is shorter
// than q.Limit only at the end.
func (s *Store) ListUserPage(ctx context.Context, q UserQuery) ([]UserSummary, error) {
	var where []string
	var args []any
	if q.After != "" {
		where = append(where, "u.name_key > ?")
		args = append(args, strings.ToLower(q.After))
	}
	if q.Search != "" {
		where = append(where, `u.name_key LIKE ? ESCAPE '\'`)
		args = append(args, likePattern(q.Search))
	}
	if q.Name != "" {
		where = append(where, `u.name_key = ?`)
		args = append(args, strings.ToLower(q.Name))
	}
	query := `SELECT u.name, u.mfa, u.created_at, u.updated_at, u.admin,
		(SELECT COUNT(*) FROM app_passwords a WHERE a.user_key = u.name_key) AS app_count,
		(SELECT MAX(a.last_used_at) FROM app_passwords a WHERE a.user_key = u.name_key) AS last_used
		FROM users u`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY u.name_key LIMIT ?"
	args = append(args, pageLimit(q.Limit))
	var rows []summaryRow
	if err := s.db.SelectContext(ctx, &rows, s.db.Rebind(query), args...); err != nil {
		return nil, fmt.Errorf("store: list users: %w", err)
	}
	out := make([]UserSummary, 0, len(rows))
	for _, r := range rows {
		us := UserSummary{User: r.user(), Admin: r.Admin, AppPasswords: r.Count}
		if r.LastUsed.Valid {
			t := r.LastUsed.Time.UTC()
			us.LastSignIn = &t
		}
		out = append(out, us)
	}
	return out, nil
}

// CountUsers returns the number of users whose name contains search
// (all users for "").
func (s *Store) CountUsers(ctx context.Context, search string) (int, error) {
	query := `SELECT COUNT(*) FROM users`
	var args []any
	if search != "" {
		query += ` WHERE name_key LIKE ? ESCAPE '\'`
		args = append(args, likePattern(search))
	}
	var n int
	if err := s.db.GetContext(ctx, &n, s.db.Rebind(query), args...); err != nil {
		return 0, fmt.Errorf("store: count users: %w", err)
	}
	return n, nil
}

// SetAdmin sets the user's admin flag; the user must exist.
func (s *Store) SetAdmin(ctx context.Context, name string, admin bool) error {
	key, err := userKey(name)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`UPDATE users SET admin = ?, updated_at = ? WHERE name_key = ?`), admin, now(), key)
	if err != nil {
		return fmt.Errorf("store: set admin flag of %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fail(ErrNotFound, "store: user %s not found: add it with \"passgate user add %s\"", name, name)
	}
	return nil
}

// IsAdmin reports whether the user is marked admin (false for an unknown
// user).
func (s *Store) IsAdmin(ctx context.Context, name string) (bool, error) {
	key, err := userKey(name)
	if err != nil {
		return false, nil
	}
	var admin bool
	err = s.db.GetContext(ctx, &admin, s.db.Rebind(`SELECT admin FROM users WHERE name_key = ?`), key)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: admin flag of %s: %w", name, err)
	}
	return admin, nil
}

// RevokeAllIDs deletes all the user's app passwords and returns their ids,
// so that live sessions opened with them can be closed at once.
func (s *Store) RevokeAllIDs(ctx context.Context, user string) ([]int64, error) {
	key, err := userKey(user)
	if err != nil {
		return nil, err
	}
	var ids []int64
	if err := s.db.SelectContext(ctx, &ids, s.db.Rebind(`DELETE FROM app_passwords WHERE user_key = ? RETURNING id`), key); err != nil {
		return nil, fmt.Errorf("store: revoke app passwords of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return ids, nil
}

// AdminToken is an admin token's metadata; the token itself is never kept.
type AdminToken struct {
	Name       string     `json:"name"`
	ReadOnly   bool       `json:"read_only"`
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
}

type tokenRow struct {
	Name       string       `db:"name"`
	ReadOnly   bool         `db:"read_only"`
	CreatedBy  string       `db:"created_by"`
	CreatedAt  time.Time    `db:"created_at"`
	ExpiresAt  sql.NullTime `db:"expires_at"`
	LastUsedAt sql.NullTime `db:"last_used_at"`
}

func (r tokenRow) token() AdminToken {
	t := AdminToken{Name: r.Name, ReadOnly: r.ReadOnly, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC()}
	if r.ExpiresAt.Valid {
		e := r.ExpiresAt.Time.UTC()
		t.ExpiresAt = &e
	}
	if r.LastUsedAt.Valid {
		e := r.LastUsedAt.Time.UTC()
		t.LastUsedAt = &e
	}
	return t
}

const tokenColumns = `name, read_only, created_by, created_at, expires_at, last_used_at`

// adminTokenPrefix starts every admin token, so that a leaked one is
// recognised by secret scanners.
const adminTokenPrefix = "pgat_"

func (s *Store) tokenHash(token string) ([]byte, error) {
	h, err := s.key()
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, h.DeriveKey("admin token"))
	m.Write([]byte(token))
	return m.Sum(nil), nil
}

// CreateAdminToken creates the admin token name and returns it with the
// token, which is never stored (only its keyed hash).
func (s *Store) CreateAdminToken(ctx context.Context, name, createdBy string, readOnly bool, expires *time.Time) (AdminToken, string, error) {
	key, err := userKey(name)
	if err != nil {
		return AdminToken{}, "", fail(ErrInvalid, "store: token name %q: use letters, digits and dashes", name)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return AdminToken{}, "", fmt.Errorf("store: new admin token: %w", err)
	}
	token := adminTokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	hash, err := s.tokenHash(token)
	if err != nil {
		return AdminToken{}, "", err
	}
	var r tokenRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`INSERT INTO admin_tokens (name_key, name, hash, read_only, created_by, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name_key) DO NOTHING RETURNING `+tokenColumns),
		key, name, hash, readOnly, createdBy, now(), nullTime(expires))
	if errors.Is(err, sql.ErrNoRows) {
		return AdminToken{}, "", fail(ErrExists, "store: admin token %s already exists: revoke it first with \"passgate admin-token revoke %s\"", name, name)
	}
	if err != nil {
		return AdminToken{}, "", fmt.Errorf("store: create admin token %s: %w", name, err)
	}
	return r.token(), token, nil
}

// ListAdminTokens returns every admin token, by name.
func (s *Store) ListAdminTokens(ctx context.Context) ([]AdminToken, error) {
	var rows []tokenRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT `+tokenColumns+` FROM admin_tokens ORDER BY name_key`); err != nil {
		return nil, fmt.Errorf("store: list admin tokens: %w", err)
	}
	out := make([]AdminToken, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.token())
	}
	return out, nil
}

// RevokeAdminToken deletes the admin token name, or returns ErrNotFound.
func (s *Store) RevokeAdminToken(ctx context.Context, name string) error {
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM admin_tokens WHERE name_key = ?`), strings.ToLower(name))
	if err != nil {
		return fmt.Errorf("store: revoke admin token %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fail(ErrNotFound, "store: no admin token named %s (see passgate admin-token list)", name)
	}
	return nil
}

// FindAdminToken returns the admin token whose secret is token, by one
// lookup of its keyed hash, and records its use; ErrNotFound for an
// unknown token. It does not check expiry: the caller does.
func (s *Store) FindAdminToken(ctx context.Context, token string) (AdminToken, error) {
	hash, err := s.tokenHash(token)
	if err != nil {
		return AdminToken{}, err
	}
	var r tokenRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`UPDATE admin_tokens SET last_used_at = ? WHERE hash = ? RETURNING `+tokenColumns), now(), hash)
	if errors.Is(err, sql.ErrNoRows) {
		return AdminToken{}, fail(ErrNotFound, "store: unknown admin token")
	}
	if err != nil {
		return AdminToken{}, fmt.Errorf("store: look up admin token: %w", err)
	}
	return r.token(), nil
}

// RolloutRow is one line of the rollout report: a user in state enabled
// who logged in with the primary password, by protocol and client name.
type RolloutRow struct {
	User     string    `json:"user"`
	Protocol string    `json:"protocol"`
	Client   string    `json:"client"`
	Last     time.Time `json:"last"`
	Addr     string    `json:"addr"`
	Count    int       `json:"count"`
}

// Rollout returns, for the users in state enabled, their successful
// primary-password logins since since, grouped by user, protocol and
// client name with the last time and address, newest first. It reads the
// partial index audit_events_rollout. Login events from before schema
// version 5 have no structured columns and are not counted.
func (s *Store) Rollout(ctx context.Context, since time.Time) ([]RolloutRow, error) {
	rows, err := s.db.QueryxContext(ctx, s.db.Rebind(`SELECT e.subject, e.protocol, e.client_addr, e.client_name, e.time FROM audit_events e
		JOIN users u ON u.name_key = e.subject_key AND u.mfa = 'enabled'
		WHERE e.action = 'login' AND e.outcome = 'success' AND e.credential = 'primary'
		AND e.reason LIKE '%would be refused once enforced%' AND e.time >= ?
		ORDER BY e.subject_key, e.time DESC`), dbTime(since))
	if err != nil {
		return nil, fmt.Errorf("store: rollout report: %w", err)
	}
	defer rows.Close()
	type key struct{ user, proto, client string }
	idx := map[key]int{}
	var out []RolloutRow
	for rows.Next() {
		var subject, proto, addr, client string
		var t time.Time
		if err := rows.Scan(&subject, &proto, &addr, &client, &t); err != nil {
			return nil, fmt.Errorf("store: rollout report: %w", err)
		}
		k := key{strings.ToLower(subject), proto, client}
		if i, ok := idx[k]; ok {
			out[i].Count++
			continue
		}
		idx[k] = len(out)
		out = append(out, RolloutRow{User: subject, Protocol: proto, Client: client, Last: t.UTC(), Addr: addr, Count: 1})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: rollout report: %w", err)
	}
	return out, nil
}
