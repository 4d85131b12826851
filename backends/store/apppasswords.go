package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"

	"github.com/passgate/passgate/backends/apppass"
)

// MaxLabel is the longest label, in characters.
const MaxLabel = 64

// maxUsageField bounds each text field of Usage, in bytes.
const maxUsageField = 256

// existingChunk bounds the ids per query in ExistingAppPasswords.
const existingChunk = 500

// appRow is a row of the app_passwords table.
type appRow struct {
	ID             int64        `db:"id"`
	User           string       `db:"user_name"`
	Label          string       `db:"label"`
	Scopes         string       `db:"scopes"`
	Hash           []byte       `db:"hash"`
	CreatedAt      time.Time    `db:"created_at"`
	ExpiresAt      sql.NullTime `db:"expires_at"`
	LastUsedAt     sql.NullTime `db:"last_used_at"`
	LastUsedAddr   string       `db:"last_used_addr"`
	LastUsedProto  string       `db:"last_used_proto"`
	LastUsedClient string       `db:"last_used_client"`
	Networks       string       `db:"networks"`
}

const appPasswordColumns = `id, user_name, label, scopes, hash, created_at, expires_at, last_used_at, last_used_addr, last_used_proto, last_used_client, networks`

func (r appRow) appPassword() AppPassword {
	a := AppPassword{
		ID:             r.ID,
		User:           r.User,
		Label:          r.Label,
		CreatedAt:      r.CreatedAt.UTC(),
		LastUsedAddr:   r.LastUsedAddr,
		LastUsedProto:  r.LastUsedProto,
		LastUsedClient: r.LastUsedClient,
		Hash:           r.Hash,
	}
	if r.Scopes != "" {
		a.Scopes = strings.Split(r.Scopes, ",")
	} else {
		a.Scopes = []string{}
	}
	if r.ExpiresAt.Valid {
		t := r.ExpiresAt.Time.UTC()
		a.ExpiresAt = &t
	}
	a.Networks = parseNetworks(r.Networks)
	if r.LastUsedAt.Valid {
		t := r.LastUsedAt.Time.UTC()
		a.LastUsedAt = &t
	}
	return a
}

// maxNetworks bounds the networks of one app password.
const maxNetworks = 32

// checkNetworks validates an app password's networks and returns them
// as stored: canonical CIDRs (host bits cleared), comma-separated; ""
// for none (from anywhere).
func checkNetworks(nets []string) (string, error) {
	if len(nets) > maxNetworks {
		return "", fail(ErrInvalid, "store: %d networks: at most %d", len(nets), maxNetworks)
	}
	out := make([]string, 0, len(nets))
	for _, n := range nets {
		n = strings.TrimSpace(n)
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				return "", fail(ErrInvalid, "store: network %q is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32", n)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked().String())
	}
	return strings.Join(out, ","), nil
}

// parseNetworks reads the stored networks column.
func parseNetworks(s string) []netip.Prefix {
	if s == "" {
		return nil
	}
	var out []netip.Prefix
	for _, n := range strings.Split(s, ",") {
		if p, err := netip.ParsePrefix(n); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// checkLabel validates a label and returns its case-folded key.
func checkLabel(label string) (string, error) {
	n := utf8.RuneCountInString(label)
	switch {
	case !utf8.ValidString(label):
		return "", fail(ErrInvalid, "store: label %q is not valid UTF-8", label)
	case strings.TrimSpace(label) == "":
		return "", fail(ErrInvalid, "store: label is empty: name the app or device, 1 to %d characters (e.g. \"Outlook laptop\")", MaxLabel)
	case n > MaxLabel:
		return "", fail(ErrInvalid, "store: label has %d characters: at most %d", n, MaxLabel)
	}
	for _, r := range label {
		if unicode.IsControl(r) {
			return "", fail(ErrInvalid, "store: label %q contains a control character", label)
		}
	}
	return strings.ToLower(label), nil
}

// checkScopes validates scopes and returns them in canonical order (imap,
// smtp, ldap), without duplicates. nil means AllScopes.
func checkScopes(scopes []string) ([]string, error) {
	if scopes == nil {
		return AllScopes(), nil
	}
	want := map[string]bool{}
	for _, sc := range scopes {
		sc = strings.ToLower(strings.TrimSpace(sc))
		switch sc {
		case ScopeIMAP, ScopeSMTP, ScopeLDAP:
			want[sc] = true
		default:
			return nil, fail(ErrInvalid, "store: unknown scope %q: use imap, smtp or ldap", sc)
		}
	}
	if len(want) == 0 {
		return nil, fail(ErrInvalid, "store: no scopes given: name at least one of imap, smtp, ldap, or leave scopes out for all three")
	}
	out := make([]string, 0, len(want))
	for _, sc := range AllScopes() {
		if want[sc] {
			out = append(out, sc)
		}
	}
	return out, nil
}

// CreateAppPassword creates an app password and returns it with its secret
// (Length lowercase letters, not formatted: show it once with
// apppass.Format, never store or log it). Only the keyed hash is stored.
//
// It fails with ErrInvalid (label, scopes, expiry in the past),
// ErrAppPasswordsDisabled (allow-app-passwords is false), ErrMFADisabled
// (the user's state is disabled; a user without a row has
// Options.DefaultMFA, and gets a row if that is enabled or enforced),
// ErrLimitReached (MaxAppPasswords already exist; two concurrent calls can
// never make one more, on either store) or ErrLabelTaken. It needs the key
// that Migrate loads (ErrNoKey otherwise).
func (s *Store) CreateAppPassword(ctx context.Context, n NewAppPassword) (AppPassword, string, error) {
	h, err := s.key()
	if err != nil {
		return AppPassword{}, "", err
	}
	key, err := userKey(n.User)
	if err != nil {
		return AppPassword{}, "", err
	}
	labelKey, err := checkLabel(n.Label)
	if err != nil {
		return AppPassword{}, "", err
	}
	scopes, err := checkScopes(n.Scopes)
	if err != nil {
		return AppPassword{}, "", err
	}
	networks, err := checkNetworks(n.Networks)
	if err != nil {
		return AppPassword{}, "", err
	}
	t := now()
	var expires *time.Time
	if n.ExpiresAt != nil {
		e := dbTime(*n.ExpiresAt)
		if !e.After(t) {
			return AppPassword{}, "", fail(ErrInvalid, "store: expiry %s is in the past: give a time in the future", e.Format(time.RFC3339))
		}
		expires = &e
	}
	secret, err := apppass.Generate()
	if err != nil {
		return AppPassword{}, "", fmt.Errorf("store: create app password: %w", err)
	}
	hash := h.Hash(key, secret)

	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return AppPassword{}, "", fmt.Errorf("store: create app password for %s: begin: %w", n.User, err)
	}
	defer rollback(tx)
	if err := s.checkAllowed(ctx, tx); err != nil {
		return AppPassword{}, "", err
	}
	name, err := s.lockUserForCreate(ctx, tx, key, n.User, t)
	if err != nil {
		return AppPassword{}, "", err
	}
	var count int
	if err := tx.GetContext(ctx, &count, tx.Rebind(`SELECT COUNT(*) FROM app_passwords WHERE user_key = ?`), key); err != nil {
		return AppPassword{}, "", fmt.Errorf("store: create app password for %s: count: %w", n.User, err)
	}
	if count >= s.maxApp {
		return AppPassword{}, "", fail(ErrLimitReached, "store: create app password for %s: limit reached (%d): delete an app password first", n.User, s.maxApp)
	}
	var taken string
	err = tx.GetContext(ctx, &taken, tx.Rebind(`SELECT label FROM app_passwords WHERE user_key = ? AND label_key = ?`), key, labelKey)
	if err == nil {
		return AppPassword{}, "", fail(ErrLabelTaken, "store: create app password for %s: label %q is already in use (as %q): choose another label, or delete that app password first", n.User, n.Label, taken)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return AppPassword{}, "", fmt.Errorf("store: create app password for %s: check label: %w", n.User, err)
	}
	var r appRow
	err = tx.GetContext(ctx, &r, tx.Rebind(`INSERT INTO app_passwords (user_key, user_name, label, label_key, scopes, hash, created_at, expires_at, networks)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+appPasswordColumns),
		key, name, n.Label, labelKey, strings.Join(scopes, ","), hash, t, nullTime(expires), networks)
	if err != nil {
		return AppPassword{}, "", fmt.Errorf("store: create app password for %s: insert: %w", n.User, err)
	}
	if err := tx.Commit(); err != nil {
		return AppPassword{}, "", fmt.Errorf("store: create app password for %s: commit: %w", n.User, err)
	}
	return r.appPassword(), secret, nil
}

// checkAllowed fails with ErrAppPasswordsDisabled when the global switch
// is off.
func (s *Store) checkAllowed(ctx context.Context, q sqlx.QueryerContext) error {
	allow, err := allowAppPasswords(ctx, q)
	if err != nil {
		return err
	}
	if !allow {
		return fail(ErrAppPasswordsDisabled, `store: app passwords are switched off: "passgate settings set allow-app-passwords true" turns them on`)
	}
	return nil
}

// lockUserForCreate locks the user's row for the rest of tx (creating it
// from Options.DefaultMFA if missing) and fails with ErrMFADisabled unless
// app passwords may be created for the user. It returns the stored name.
func (s *Store) lockUserForCreate(ctx context.Context, tx *sqlx.Tx, key, name string, t time.Time) (string, error) {
	var r userRow
	q := tx.Rebind(`SELECT ` + userColumns + ` FROM users WHERE name_key = ?` + s.forUpdate())
	err := tx.GetContext(ctx, &r, q, key)
	if errors.Is(err, sql.ErrNoRows) {
		if s.defaultMFA == MFADisabled {
			return "", s.mfaDisabled(name)
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO users (name_key, name, mfa, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (name_key) DO NOTHING`), key, name, string(s.defaultMFA), t, t); err != nil {
			return "", fmt.Errorf("store: create app password for %s: add user: %w", name, err)
		}
		err = tx.GetContext(ctx, &r, q, key)
	}
	if err != nil {
		return "", fmt.Errorf("store: create app password for %s: read user: %w", name, err)
	}
	if MFAState(r.MFA) == MFADisabled {
		return "", s.mfaDisabled(name)
	}
	return r.Name, nil
}

func (s *Store) mfaDisabled(name string) error {
	return fail(ErrMFADisabled, "store: create app password: MFA is disabled for %s: turn it on with \"passgate user set-mfa %s enabled\"", name, name)
}

func nullTime(t *time.Time) sql.NullTime {
	if t == nil {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: *t, Valid: true}
}

// ListAppPasswords returns the user's app passwords, oldest first (an
// empty list for an unknown user). It works while app passwords are
// switched off.
func (s *Store) ListAppPasswords(ctx context.Context, user string) ([]AppPassword, error) {
	key, err := userKey(user)
	if err != nil {
		return nil, err
	}
	var rows []appRow
	if err := s.db.SelectContext(ctx, &rows, s.db.Rebind(`SELECT `+appPasswordColumns+` FROM app_passwords WHERE user_key = ? ORDER BY id`), key); err != nil {
		return nil, fmt.Errorf("store: list app passwords of %s: %w", user, err)
	}
	out := make([]AppPassword, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.appPassword())
	}
	return out, nil
}

// DeleteAppPassword deletes the user's app password whose label matches
// label ignoring case, and returns what it deleted, or ErrNotFound. It works
// while app passwords are switched off.
func (s *Store) DeleteAppPassword(ctx context.Context, user, label string) (AppPassword, error) {
	key, err := userKey(user)
	if err != nil {
		return AppPassword{}, err
	}
	var r appRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`DELETE FROM app_passwords WHERE user_key = ? AND label_key = ? RETURNING `+appPasswordColumns), key, strings.ToLower(label))
	if errors.Is(err, sql.ErrNoRows) {
		return AppPassword{}, fail(ErrNotFound, "store: %s has no app password labelled %q (see passgate app-password list %s)", user, label, user)
	}
	if err != nil {
		return AppPassword{}, fmt.Errorf("store: delete app password %q of %s: %w", label, user, err)
	}
	s.syncNow(ctx)
	return r.appPassword(), nil
}

// RevokeAll deletes all the user's app passwords and returns how many there
// were.
func (s *Store) RevokeAll(ctx context.Context, user string) (int, error) {
	key, err := userKey(user)
	if err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM app_passwords WHERE user_key = ?`), key)
	if err != nil {
		return 0, fmt.Errorf("store: revoke app passwords of %s: %w", user, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("store: revoke app passwords of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return int(n), nil
}

// FindAppPassword returns the user's app password whose secret is secret
// (spaces and case ignored), or ErrNotFound. It makes one indexed lookup
// by (user, keyed hash) and compares the hash in constant time; it does
// not check scope, expiry or the global switch: the caller (policy) does.
// Input that cannot be an app password is hashed and looked up all the
// same, so that timing does not tell it apart.
func (s *Store) FindAppPassword(ctx context.Context, user, secret string) (AppPassword, error) {
	h, err := s.key()
	if err != nil {
		return AppPassword{}, err
	}
	key, kerr := userKey(user)
	want := h.Hash(key, secret)
	if kerr != nil {
		// No row can have this name; PostgreSQL would even refuse to
		// look (invalid UTF-8, NUL). Hashed all the same, for timing.
		return AppPassword{}, fail(ErrNotFound, "store: no app password of %q matches (not a valid user name)", cleanText(user, maxUserName))
	}
	var r appRow
	if st := s.findStmtFor(ctx); st != nil {
		err = st.QueryRowxContext(ctx, key, want).StructScan(&r)
	} else {
		err = s.db.QueryRowxContext(ctx, s.findQuery, key, want).StructScan(&r)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return AppPassword{}, fail(ErrNotFound, "store: no app password of %s matches", user)
	}
	if err != nil {
		return AppPassword{}, fmt.Errorf("store: find app password of %s: %w", user, err)
	}
	if !apppass.Equal(r.Hash, want) {
		return AppPassword{}, fail(ErrNotFound, "store: no app password of %s matches", user)
	}
	return r.appPassword(), nil
}

// TouchAppPassword records a successful login with app password id, or
// returns ErrNotFound if it was deleted meanwhile. A zero u.At means now.
// The text fields, which a client may choose (the IMAP ID name), are
// stored as valid UTF-8 without control characters, cut to 256 bytes.
func (s *Store) TouchAppPassword(ctx context.Context, id int64, u Usage) error {
	q, err := s.hotStmt(ctx, touchQuery)
	if err != nil {
		return err
	}
	return touch(ctx, q, id, u)
}

// RecordLogin records a successful app-password login in one transaction:
// the app password's last use and the audit event. It returns an error
// matching ErrNotFound, and records nothing, when the app password no
// longer exists (deleted during the login). One commit instead of two
// keeps the store off the critical path of a login.
func (s *Store) RecordLogin(ctx context.Context, id int64, u Usage, ev AuditEvent) error {
	ctx, err := s.runCtx(ctx)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: record login: begin: %w", err)
	}
	defer rollback(tx)
	touchQ, err := s.hotStmt(ctx, touchQuery)
	if err != nil {
		return err
	}
	recordQ, err := s.hotStmt(ctx, recordQuery)
	if err != nil {
		return err
	}
	if err := touch(ctx, tx.StmtxContext(ctx, touchQ), id, u); err != nil {
		return err
	}
	if err := record(ctx, tx.StmtxContext(ctx, recordQ), ev); err != nil {
		return err
	}
	if err := applyNote(ctx, tx, ev.Lockout); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: record login: commit: %w", err)
	}
	return nil
}

const touchQuery = `UPDATE app_passwords SET last_used_at = ?, last_used_addr = ?, last_used_proto = ?, last_used_client = ? WHERE id = ?`

// stmtExec is a prepared statement, alone or within a transaction.
type stmtExec interface {
	ExecContext(ctx context.Context, args ...any) (sql.Result, error)
}

func touch(ctx context.Context, q stmtExec, id int64, u Usage) error {
	at := u.At
	if at.IsZero() {
		at = time.Now()
	}
	res, err := q.ExecContext(ctx,
		dbTime(at), cleanText(u.Addr, maxUsageField), cleanText(u.Proto, maxUsageField), cleanText(u.Client, maxUsageField), id)
	if err != nil {
		return fmt.Errorf("store: record use of app password %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("store: record use of app password %d: %w", id, err)
	} else if n == 0 {
		return fail(ErrNotFound, "store: app password %d no longer exists", id)
	}
	return nil
}

// ExistingAppPasswords reports which of ids still exist: the map holds true
// for each id that does (ids that do not are absent). Ids are never
// reused, so a live session whose id is absent must be closed.
func (s *Store) ExistingAppPasswords(ctx context.Context, ids []int64) (map[int64]bool, error) {
	out := make(map[int64]bool, len(ids))
	for start := 0; start < len(ids); start += existingChunk {
		chunk := ids[start:min(start+existingChunk, len(ids))]
		q, args, err := sqlx.In(`SELECT id FROM app_passwords WHERE id IN (?)`, chunk)
		if err != nil {
			return nil, fmt.Errorf("store: check app passwords: %w", err)
		}
		var found []int64
		if err := s.db.SelectContext(ctx, &found, s.db.Rebind(q), args...); err != nil {
			return nil, fmt.Errorf("store: check app passwords: %w", err)
		}
		for _, id := range found {
			out[id] = true
		}
	}
	return out, nil
}

// allowAppPasswords reads the global switch (default true).
func allowAppPasswords(ctx context.Context, q sqlx.QueryerContext) (bool, error) {
	v, found, err := getSetting(ctx, q, settingAllowAppPasswords)
	if err != nil {
		return false, err
	}
	return !found || v == "true", nil
}

// AllowAppPasswords reports the global switch "allow app passwords"
// (default true). When false, none can be created and policy accepts none.
func (s *Store) AllowAppPasswords(ctx context.Context) (bool, error) {
	q, err := s.hotStmt(ctx, `SELECT value FROM settings WHERE name = ?`)
	if err != nil {
		return false, err
	}
	var v string
	err = q.GetContext(ctx, &v, settingAllowAppPasswords)
	if errors.Is(err, sql.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: read setting %s: %w", settingAllowAppPasswords, err)
	}
	return v == "true", nil
}

// SetAllowAppPasswords sets the global switch.
func (s *Store) SetAllowAppPasswords(ctx context.Context, allow bool) error {
	if err := putSetting(ctx, s.db, settingAllowAppPasswords, fmt.Sprint(allow)); err != nil {
		return err
	}
	s.syncNow(ctx)
	return nil
}

// findStmtFor returns the login's lookup prepared, preparing it on first
// use: prepared, it is one round trip to PostgreSQL instead of two, and
// SQLite parses it once per connection. It returns nil when it cannot be
// prepared; the caller then runs the query unprepared.
func (s *Store) findStmtFor(ctx context.Context) *sqlx.Stmt {
	if st := s.findStmt.Load(); st != nil {
		return st
	}
	st, err := s.db.PreparexContext(ctx, s.findQuery)
	if err != nil {
		return nil
	}
	if !s.findStmt.CompareAndSwap(nil, st) {
		_ = st.Close()
		return s.findStmt.Load()
	}
	return st
}
