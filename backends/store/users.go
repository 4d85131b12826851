package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// maxUserName is the longest user name accepted, in bytes (an e-mail
// address is at most 254).
const maxUserName = 256

// userKey validates a login name and returns the lower-cased key that rows
// are stored and compared under.
func userKey(name string) (string, error) {
	switch {
	case name == "":
		return "", fail(ErrInvalid, "store: user name is empty")
	case len(name) > maxUserName:
		return "", fail(ErrInvalid, "store: user name is %d bytes long: at most %d", len(name), maxUserName)
	case !utf8.ValidString(name):
		return "", fail(ErrInvalid, "store: user name %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return "", fail(ErrInvalid, "store: user name %q contains a space or control character: use the login name the mail server knows", name)
		}
	}
	return strings.ToLower(name), nil
}

func validMFA(st MFAState) error {
	switch st {
	case MFADisabled, MFAEnabled, MFAEnforced:
		return nil
	}
	return fail(ErrInvalid, "store: unknown MFA state %q: use disabled, enabled or enforced", st)
}

// userRow is a row of the users table.
type userRow struct {
	Name      string    `db:"name"`
	MFA       string    `db:"mfa"`
	CreatedAt time.Time `db:"created_at"`
	UpdatedAt time.Time `db:"updated_at"`
}

func (r userRow) user() User {
	return User{Name: r.Name, MFA: MFAState(r.MFA), CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
}

const userColumns = `name, mfa, created_at, updated_at`

// AddUser creates the user name with MFA state mfa ("" means
// Options.DefaultMFA). It fails with ErrExists if the name is taken in any
// case.
func (s *Store) AddUser(ctx context.Context, name string, mfa MFAState) (User, error) {
	key, err := userKey(name)
	if err != nil {
		return User{}, err
	}
	if mfa == "" {
		mfa = s.defaultMFA
	}
	if err := validMFA(mfa); err != nil {
		return User{}, err
	}
	t := now()
	var r userRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`INSERT INTO users (name_key, name, mfa, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (name_key) DO NOTHING RETURNING `+userColumns), key, name, string(mfa), t, t)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fail(ErrExists, "store: user %s already exists: change it with \"passgate user set-mfa %s STATE\"", name, name)
	}
	if err != nil {
		return User{}, fmt.Errorf("store: add user %s: %w", name, err)
	}
	return r.user(), nil
}

// GetUser returns the user's row, or ErrNotFound.
func (s *Store) GetUser(ctx context.Context, name string) (User, error) {
	key, err := userKey(name)
	if err != nil {
		return User{}, err
	}
	var r userRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`SELECT `+userColumns+` FROM users WHERE name_key = ?`), key)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, fail(ErrNotFound, "store: user %s not found: add it with \"passgate user add %s\"", name, name)
	}
	if err != nil {
		return User{}, fmt.Errorf("store: get user %s: %w", name, err)
	}
	return r.user(), nil
}

// UserMFA returns the user's MFA state, or Options.DefaultMFA for a user
// without a row.
func (s *Store) UserMFA(ctx context.Context, name string) (MFAState, error) {
	key, err := userKey(name)
	if err != nil {
		return "", err
	}
	var st string
	q, err := s.hotStmt(ctx, `SELECT mfa FROM users WHERE name_key = ?`)
	if err != nil {
		return "", err
	}
	err = q.GetContext(ctx, &st, key)
	if errors.Is(err, sql.ErrNoRows) {
		return s.defaultMFA, nil
	}
	if err != nil {
		return "", fmt.Errorf("store: MFA state of %s: %w", name, err)
	}
	return MFAState(st), nil
}

// ListUsers returns every user, ordered by name.
func (s *Store) ListUsers(ctx context.Context) ([]User, error) {
	var rows []userRow
	if err := s.db.SelectContext(ctx, &rows, `SELECT `+userColumns+` FROM users ORDER BY name_key`); err != nil {
		return nil, fmt.Errorf("store: list users: %w", err)
	}
	out := make([]User, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.user())
	}
	return out, nil
}

// SetMFA sets the user's MFA state, creating the user's row if missing.
// The user's app passwords are kept whatever the new state.
func (s *Store) SetMFA(ctx context.Context, name string, st MFAState) (User, error) {
	key, err := userKey(name)
	if err != nil {
		return User{}, err
	}
	if err := validMFA(st); err != nil {
		return User{}, err
	}
	t := now()
	var r userRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`INSERT INTO users (name_key, name, mfa, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (name_key) DO UPDATE SET mfa = excluded.mfa, updated_at = excluded.updated_at
		RETURNING `+userColumns), key, name, string(st), t, t)
	if err != nil {
		return User{}, fmt.Errorf("store: set MFA of %s: %w", name, err)
	}
	s.syncNow(ctx)
	return r.user(), nil
}

// DeleteUser deletes the user's row and all the user's app passwords, or
// returns ErrNotFound. The audit trail is kept.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	key, err := userKey(name)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: delete user %s: %w", name, err)
	}
	defer rollback(tx)
	if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM app_passwords WHERE user_key = ?`), key); err != nil {
		return fmt.Errorf("store: delete app passwords of %s: %w", name, err)
	}
	for _, table := range []string{"user_passwords", "totp_secrets", "recovery_codes", "webauthn_credentials", "web_sessions"} {
		if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM `+table+` WHERE user_key = ?`), key); err != nil {
			return fmt.Errorf("store: delete %s of %s: %w", table, name, err)
		}
	}
	res, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM users WHERE name_key = ?`), key)
	if err != nil {
		return fmt.Errorf("store: delete user %s: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("store: delete user %s: %w", name, err)
	} else if n == 0 {
		return fail(ErrNotFound, "store: user %s not found (see passgate user list)", name)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: delete user %s: commit: %w", name, err)
	}
	s.syncNow(ctx)
	return nil
}
