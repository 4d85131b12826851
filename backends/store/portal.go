package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// This file holds what the Security info portal keeps: primary-password
// hashes for the store verifier, TOTP seeds, recovery codes, WebAuthn
// credentials and portal sessions. Nothing here is a secret in clear: seeds
// and session data are sealed with AES-GCM under a key derived from the
// server key, recovery codes are kept as keyed hashes, session ids as
// SHA-256 hashes, primary passwords as whatever slow hash the caller made.

// Purposes of keys derived from the server key.
const (
	purposeSeal     = "seal v1"
	purposeRecovery = "recovery code v1"
)

// seal encrypts plain with AES-256-GCM under the sealing key; aad binds the
// result to its row (table and user), so that a sealed value copied to
// another row does not open.
func (s *Store) seal(plain []byte, aad string) ([]byte, error) {
	g, err := s.gcm()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize(), g.NonceSize()+len(plain)+g.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("store: seal: random nonce: %w", err)
	}
	return g.Seal(nonce, nonce, plain, []byte(aad)), nil
}

// open decrypts what seal made.
func (s *Store) open(sealed []byte, aad string) ([]byte, error) {
	g, err := s.gcm()
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize() {
		return nil, fmt.Errorf("store: sealed value is too short: the row is damaged")
	}
	plain, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("store: sealed value does not open under the server key (a different key_file?): %w", err)
	}
	return plain, nil
}

func (s *Store) gcm() (cipher.AEAD, error) {
	h, err := s.key()
	if err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(h.DeriveKey(purposeSeal))
	if err != nil {
		return nil, fmt.Errorf("store: seal: %w", err)
	}
	return cipher.NewGCM(b)
}

// SetPasswordHash stores the user's primary-password hash (for the store
// verifier), replacing any earlier one. The hash is made by the caller
// (argon2id); the store never sees the password.
func (s *Store) SetPasswordHash(ctx context.Context, user, hash string) error {
	key, err := userKey(user)
	if err != nil {
		return err
	}
	if hash == "" {
		return fail(ErrInvalid, "store: set password of %s: empty hash", user)
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind(`INSERT INTO user_passwords (user_key, hash, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (user_key) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at`), key, hash, now())
	if err != nil {
		return fmt.Errorf("store: set password of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return nil
}

// PasswordHash returns the user's primary-password hash, or ErrNotFound.
func (s *Store) PasswordHash(ctx context.Context, user string) (string, error) {
	key, err := userKey(user)
	if err != nil {
		return "", err
	}
	var h string
	err = s.db.GetContext(ctx, &h, s.db.Rebind(`SELECT hash FROM user_passwords WHERE user_key = ?`), key)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fail(ErrNotFound, "store: %s has no password: set one with \"passgate user set-password %s\"", user, user)
	}
	if err != nil {
		return "", fmt.Errorf("store: password of %s: %w", user, err)
	}
	return h, nil
}

// SetTOTP stores the user's TOTP seed (sealed), replacing any earlier one
// and forgetting the last accepted step.
func (s *Store) SetTOTP(ctx context.Context, user, seed string) error {
	key, err := userKey(user)
	if err != nil {
		return err
	}
	sealed, err := s.seal([]byte(seed), "totp\x00"+key)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind(`INSERT INTO totp_secrets (user_key, sealed, last_step, created_at) VALUES (?, ?, 0, ?)
		ON CONFLICT (user_key) DO UPDATE SET sealed = excluded.sealed, last_step = 0, created_at = excluded.created_at`), key, sealed, now())
	if err != nil {
		return fmt.Errorf("store: set TOTP of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return nil
}

// TOTP returns the user's TOTP seed, when it was registered and the last
// accepted time step, or ErrNotFound.
func (s *Store) TOTP(ctx context.Context, user string) (seed string, created time.Time, lastStep int64, err error) {
	key, err := userKey(user)
	if err != nil {
		return "", time.Time{}, 0, err
	}
	var r struct {
		Sealed   []byte    `db:"sealed"`
		LastStep int64     `db:"last_step"`
		Created  time.Time `db:"created_at"`
	}
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`SELECT sealed, last_step, created_at FROM totp_secrets WHERE user_key = ?`), key)
	if errors.Is(err, sql.ErrNoRows) {
		return "", time.Time{}, 0, fail(ErrNotFound, "store: %s has no authenticator app", user)
	}
	if err != nil {
		return "", time.Time{}, 0, fmt.Errorf("store: TOTP of %s: %w", user, err)
	}
	plain, err := s.open(r.Sealed, "totp\x00"+key)
	if err != nil {
		return "", time.Time{}, 0, fmt.Errorf("store: TOTP of %s: %w", user, err)
	}
	return string(plain), r.Created.UTC(), r.LastStep, nil
}

// UseTOTPStep records step as the user's last accepted TOTP time step if
// it is later than the one recorded, and reports whether it was: a code is
// accepted once, even by two instances at the same moment.
func (s *Store) UseTOTPStep(ctx context.Context, user string, step int64) (bool, error) {
	key, err := userKey(user)
	if err != nil {
		return false, err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`UPDATE totp_secrets SET last_step = ? WHERE user_key = ? AND last_step < ?`), step, key, step)
	if err != nil {
		return false, fmt.Errorf("store: use TOTP step of %s: %w", user, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: use TOTP step of %s: %w", user, err)
	}
	return n == 1, nil
}

// DeleteTOTP deletes the user's authenticator app and recovery codes, or
// returns ErrNotFound.
func (s *Store) DeleteTOTP(ctx context.Context, user string) error {
	key, err := userKey(user)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM totp_secrets WHERE user_key = ?`), key)
	if err != nil {
		return fmt.Errorf("store: delete TOTP of %s: %w", user, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fail(ErrNotFound, "store: %s has no authenticator app", user)
	}
	if _, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM recovery_codes WHERE user_key = ?`), key); err != nil {
		return fmt.Errorf("store: delete recovery codes of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return nil
}

// normRecovery folds a recovery code as typed: case, spaces and dashes do
// not matter.
func normRecovery(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == ' ' || r == '-':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return r
	}, code)
}

func (s *Store) recoveryHash(key, code string) ([]byte, error) {
	h, err := s.key()
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, h.DeriveKey(purposeRecovery))
	m.Write([]byte(key))
	m.Write([]byte{0})
	m.Write([]byte(normRecovery(code)))
	return m.Sum(nil), nil
}

// SetRecoveryCodes replaces the user's recovery codes with codes; only
// their keyed hashes are kept.
func (s *Store) SetRecoveryCodes(ctx context.Context, user string, codes []string) error {
	key, err := userKey(user)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: set recovery codes of %s: %w", user, err)
	}
	defer rollback(tx)
	if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM recovery_codes WHERE user_key = ?`), key); err != nil {
		return fmt.Errorf("store: set recovery codes of %s: %w", user, err)
	}
	t := now()
	for _, c := range codes {
		h, err := s.recoveryHash(key, c)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO recovery_codes (user_key, hash, created_at) VALUES (?, ?, ?)`), key, h, t); err != nil {
			return fmt.Errorf("store: set recovery codes of %s: %w", user, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: set recovery codes of %s: commit: %w", user, err)
	}
	s.syncNow(ctx)
	return nil
}

// UseRecoveryCode deletes the user's recovery code code and reports
// whether there was one: each code opens once.
func (s *Store) UseRecoveryCode(ctx context.Context, user, code string) (bool, error) {
	key, err := userKey(user)
	if err != nil {
		return false, err
	}
	h, err := s.recoveryHash(key, code)
	if err != nil {
		return false, err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM recovery_codes WHERE user_key = ? AND hash = ?`), key, h)
	if err != nil {
		return false, fmt.Errorf("store: use recovery code of %s: %w", user, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: use recovery code of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return n == 1, nil
}

// RecoveryCodesLeft returns how many unused recovery codes the user has.
func (s *Store) RecoveryCodesLeft(ctx context.Context, user string) (int, error) {
	key, err := userKey(user)
	if err != nil {
		return 0, err
	}
	var n int
	if err := s.db.GetContext(ctx, &n, s.db.Rebind(`SELECT COUNT(*) FROM recovery_codes WHERE user_key = ?`), key); err != nil {
		return 0, fmt.Errorf("store: count recovery codes of %s: %w", user, err)
	}
	return n, nil
}

// WebAuthnCredential is a registered passkey or security key.
type WebAuthnCredential struct {
	ID           int64      `json:"id"`
	User         string     `json:"user"`
	Name         string     `json:"name"`
	CredentialID []byte     `json:"credential_id"`
	Data         []byte     `json:"-"` // the library's credential record (public key, sign count), JSON
	CreatedAt    time.Time  `json:"created_at"`
	LastUsedAt   *time.Time `json:"last_used_at,omitempty"`
}

type webauthnRow struct {
	ID           int64        `db:"id"`
	Name         string       `db:"name"`
	CredentialID []byte       `db:"credential_id"`
	Data         []byte       `db:"data"`
	CreatedAt    time.Time    `db:"created_at"`
	LastUsedAt   sql.NullTime `db:"last_used_at"`
}

func (r webauthnRow) credential(user string) WebAuthnCredential {
	c := WebAuthnCredential{ID: r.ID, User: user, Name: r.Name, CredentialID: r.CredentialID, Data: r.Data, CreatedAt: r.CreatedAt.UTC()}
	if r.LastUsedAt.Valid {
		t := r.LastUsedAt.Time.UTC()
		c.LastUsedAt = &t
	}
	return c
}

const webauthnColumns = `id, name, credential_id, data, created_at, last_used_at`

// AddWebAuthn stores a new credential of c.User (Name 1–64 characters,
// CredentialID unique) and returns it with its id.
func (s *Store) AddWebAuthn(ctx context.Context, c WebAuthnCredential) (WebAuthnCredential, error) {
	key, err := userKey(c.User)
	if err != nil {
		return WebAuthnCredential{}, err
	}
	if _, err := checkLabel(c.Name); err != nil {
		return WebAuthnCredential{}, err
	}
	if len(c.CredentialID) == 0 || len(c.Data) == 0 {
		return WebAuthnCredential{}, fail(ErrInvalid, "store: add passkey of %s: empty credential", c.User)
	}
	var r webauthnRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`INSERT INTO webauthn_credentials (user_key, name, credential_id, data, created_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (credential_id) DO NOTHING RETURNING `+webauthnColumns), key, c.Name, c.CredentialID, c.Data, now())
	if errors.Is(err, sql.ErrNoRows) {
		return WebAuthnCredential{}, fail(ErrExists, "store: add passkey of %s: this authenticator is registered already", c.User)
	}
	if err != nil {
		return WebAuthnCredential{}, fmt.Errorf("store: add passkey of %s: %w", c.User, err)
	}
	return r.credential(c.User), nil
}

// ListWebAuthn returns the user's credentials, oldest first.
func (s *Store) ListWebAuthn(ctx context.Context, user string) ([]WebAuthnCredential, error) {
	key, err := userKey(user)
	if err != nil {
		return nil, err
	}
	var rows []webauthnRow
	if err := s.db.SelectContext(ctx, &rows, s.db.Rebind(`SELECT `+webauthnColumns+` FROM webauthn_credentials WHERE user_key = ? ORDER BY id`), key); err != nil {
		return nil, fmt.Errorf("store: list passkeys of %s: %w", user, err)
	}
	out := make([]WebAuthnCredential, 0, len(rows))
	for _, r := range rows {
		out = append(out, r.credential(user))
	}
	return out, nil
}

// UpdateWebAuthn records a use of the user's credential credID: its new
// record (sign count) and the time.
func (s *Store) UpdateWebAuthn(ctx context.Context, user string, credID, data []byte, at time.Time) error {
	key, err := userKey(user)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`UPDATE webauthn_credentials SET data = ?, last_used_at = ? WHERE user_key = ? AND credential_id = ?`),
		data, dbTime(at), key, credID)
	if err != nil {
		return fmt.Errorf("store: update passkey of %s: %w", user, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fail(ErrNotFound, "store: %s has no such passkey", user)
	}
	return nil
}

// DeleteWebAuthn deletes the user's credential id and returns it, or
// ErrNotFound.
func (s *Store) DeleteWebAuthn(ctx context.Context, user string, id int64) (WebAuthnCredential, error) {
	key, err := userKey(user)
	if err != nil {
		return WebAuthnCredential{}, err
	}
	var r webauthnRow
	err = s.db.GetContext(ctx, &r, s.db.Rebind(`DELETE FROM webauthn_credentials WHERE user_key = ? AND id = ? RETURNING `+webauthnColumns), key, id)
	if errors.Is(err, sql.ErrNoRows) {
		return WebAuthnCredential{}, fail(ErrNotFound, "store: %s has no passkey %d", user, id)
	}
	if err != nil {
		return WebAuthnCredential{}, fmt.Errorf("store: delete passkey of %s: %w", user, err)
	}
	s.syncNow(ctx)
	return r.credential(user), nil
}

// WebSession is a portal session. The cookie's value is never stored:
// IDHash is its SHA-256.
type WebSession struct {
	IDHash    []byte
	User      string // stored name
	Stage     string // the portal's own: how far the sign-in went
	CreatedAt time.Time
	SeenAt    time.Time // last request, for the idle timeout
	AuthAt    time.Time // last sign-in or step-up, for re-authentication
	Addr      string    // client address at sign-in
	Agent     string    // User-Agent at sign-in
	Data      []byte    // the portal's own state, sealed at rest
}

type sessionRow struct {
	IDHash    []byte    `db:"id_hash"`
	User      string    `db:"user_name"`
	UserKey   string    `db:"user_key"`
	Stage     string    `db:"stage"`
	CreatedAt time.Time `db:"created_at"`
	SeenAt    time.Time `db:"seen_at"`
	AuthAt    time.Time `db:"auth_at"`
	Addr      string    `db:"addr"`
	Agent     string    `db:"agent"`
	Data      []byte    `db:"data"`
}

const sessionColumns = `id_hash, user_name, user_key, stage, created_at, seen_at, auth_at, addr, agent, data`

func (s *Store) sessionFromRow(r sessionRow) (WebSession, error) {
	ws := WebSession{IDHash: r.IDHash, User: r.User, Stage: r.Stage, CreatedAt: r.CreatedAt.UTC(), SeenAt: r.SeenAt.UTC(),
		AuthAt: r.AuthAt.UTC(), Addr: r.Addr, Agent: r.Agent}
	if len(r.Data) > 0 {
		plain, err := s.open(r.Data, "session\x00"+r.UserKey)
		if err != nil {
			return WebSession{}, err
		}
		ws.Data = plain
	}
	return ws, nil
}

func (s *Store) sealSession(key string, data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, nil
	}
	return s.seal(data, "session\x00"+key)
}

// CreateWebSession stores a new session.
func (s *Store) CreateWebSession(ctx context.Context, ws WebSession) error {
	key, err := userKey(ws.User)
	if err != nil {
		return err
	}
	if len(ws.IDHash) != sha256.Size {
		return fail(ErrInvalid, "store: create session: the id hash must be %d bytes", sha256.Size)
	}
	data, err := s.sealSession(key, ws.Data)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.db.Rebind(`INSERT INTO web_sessions (id_hash, user_key, user_name, stage, created_at, seen_at, auth_at, addr, agent, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), ws.IDHash, key, ws.User, ws.Stage, dbTime(ws.CreatedAt), dbTime(ws.SeenAt), dbTime(ws.AuthAt),
		cleanText(ws.Addr, maxUsageField), cleanText(ws.Agent, maxUsageField), data)
	if err != nil {
		return fmt.Errorf("store: create session of %s: %w", ws.User, err)
	}
	return nil
}

// GetWebSession returns the session whose id hashes to idHash, or
// ErrNotFound.
func (s *Store) GetWebSession(ctx context.Context, idHash []byte) (WebSession, error) {
	var r sessionRow
	err := s.db.GetContext(ctx, &r, s.db.Rebind(`SELECT `+sessionColumns+` FROM web_sessions WHERE id_hash = ?`), idHash)
	if errors.Is(err, sql.ErrNoRows) {
		return WebSession{}, fail(ErrNotFound, "store: no such session")
	}
	if err != nil {
		return WebSession{}, fmt.Errorf("store: read session: %w", err)
	}
	return s.sessionFromRow(r)
}

// UpdateWebSession writes the session's stage, times and data.
func (s *Store) UpdateWebSession(ctx context.Context, ws WebSession) error {
	key, err := userKey(ws.User)
	if err != nil {
		return err
	}
	data, err := s.sealSession(key, ws.Data)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`UPDATE web_sessions SET stage = ?, seen_at = ?, auth_at = ?, data = ? WHERE id_hash = ? AND user_key = ?`),
		ws.Stage, dbTime(ws.SeenAt), dbTime(ws.AuthAt), data, ws.IDHash, key)
	if err != nil {
		return fmt.Errorf("store: update session of %s: %w", ws.User, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fail(ErrNotFound, "store: no such session")
	}
	return nil
}

// DeleteWebSession deletes one session; a missing one is not an error.
func (s *Store) DeleteWebSession(ctx context.Context, idHash []byte) error {
	if _, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM web_sessions WHERE id_hash = ?`), idHash); err != nil {
		return fmt.Errorf("store: delete session: %w", err)
	}
	return nil
}

// DeleteWebSessions deletes every session of the user ("Sign out
// everywhere") and returns how many there were.
func (s *Store) DeleteWebSessions(ctx context.Context, user string) (int, error) {
	key, err := userKey(user)
	if err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM web_sessions WHERE user_key = ?`), key)
	if err != nil {
		return 0, fmt.Errorf("store: delete sessions of %s: %w", user, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// ListWebSessions returns the user's sessions, newest first, without
// their data.
func (s *Store) ListWebSessions(ctx context.Context, user string) ([]WebSession, error) {
	key, err := userKey(user)
	if err != nil {
		return nil, err
	}
	var rows []sessionRow
	if err := s.db.SelectContext(ctx, &rows, s.db.Rebind(`SELECT id_hash, user_name, user_key, stage, created_at, seen_at, auth_at, addr, agent, NULL AS data
		FROM web_sessions WHERE user_key = ? ORDER BY created_at DESC`), key); err != nil {
		return nil, fmt.Errorf("store: list sessions of %s: %w", user, err)
	}
	out := make([]WebSession, 0, len(rows))
	for _, r := range rows {
		ws, err := s.sessionFromRow(r)
		if err != nil {
			return nil, err
		}
		out = append(out, ws)
	}
	return out, nil
}

// DeleteStaleWebSessions deletes sessions last seen before idleBefore or
// created before absBefore, and returns how many.
func (s *Store) DeleteStaleWebSessions(ctx context.Context, idleBefore, absBefore time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, s.db.Rebind(`DELETE FROM web_sessions WHERE seen_at < ? OR created_at < ?`), dbTime(idleBefore), dbTime(absBefore))
	if err != nil {
		return 0, fmt.Errorf("store: delete stale sessions: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
