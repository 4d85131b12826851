package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/passgate/passgate/backends/apppass"
)

// Names of rows in the settings table.
const (
	settingKeyFingerprint    = "key_fingerprint"
	settingAllowAppPasswords = "allow_app_passwords"
)

// resetKeyHint is the way out named by ErrKeyMismatch errors.
const resetKeyHint = `if it is lost for good, "passgate migrate --reset-key" deletes every app password and starts over with a new key`

// setUpKey loads, creates or checks the key file against the store and
// makes it the store's hasher.
func (s *Store) setUpKey(ctx context.Context, conn *sqlx.Conn) error {
	path := s.opts.KeyFile
	if path == "" {
		return fail(ErrInvalid, "store: key_file is empty: set key_file in the configuration to the file of the server key (it is created on a new store)")
	}
	tx, err := conn.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: key: begin: %w", err)
	}
	defer rollback(tx)
	fp, found, err := getSetting(ctx, tx, settingKeyFingerprint)
	if err != nil {
		return err
	}
	if !found {
		key, err := loadOrCreateKey(path)
		if err != nil {
			return err
		}
		h, err := apppass.NewHasher(key)
		if err != nil {
			return fmt.Errorf("store: key file %q: %w", path, err)
		}
		if err := putSetting(ctx, tx, settingKeyFingerprint, h.Fingerprint()); err != nil {
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("store: key: record fingerprint: %w", err)
		}
		s.setKey(h)
		return nil
	}

	key, err := readKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fail(ErrKeyMismatch, "store: key file %q is missing but the store already holds %s hashed with a key (fingerprint %s): "+
			"restore the key file from backup (every instance needs the same file), or, %s", path, countAppPasswords(ctx, tx), fp, resetKeyHint)
	}
	if err != nil {
		// Unreadable, too open or malformed: not a mismatch, so that
		// migrate --reset-key never deletes app passwords over a
		// permission problem.
		return err
	}
	h, err := apppass.NewHasher(key)
	if err != nil {
		return fmt.Errorf("store: key file %q: %w", path, err)
	}
	if got := h.Fingerprint(); got != fp {
		return fail(ErrKeyMismatch, "store: key file %q (fingerprint %s) is not the key that the store's %s were hashed with (fingerprint %s): "+
			"put the right key file back (from backup or from another instance), or, %s", path, got, countAppPasswords(ctx, tx), fp, resetKeyHint)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: key: %w", err)
	}
	s.setKey(h)
	return nil
}

// countCap bounds the count that a key error reports: the error path
// must not read a whole table of a million users' app passwords.
const countCap = 1000

// countAppPasswords describes how many app passwords the store holds, for
// a key error only: "12 app passwords", "more than 1000 app passwords".
// It reads at most countCap+1 index entries; Migrate's normal path never
// calls it, so opening a store costs the same whatever its size.
func countAppPasswords(ctx context.Context, q sqlx.QueryerContext) string {
	var n int
	if err := sqlx.GetContext(ctx, q, &n, rebind(q, `SELECT COUNT(*) FROM (SELECT 1 FROM app_passwords LIMIT ?) AS capped`), countCap+1); err != nil {
		return "app passwords"
	}
	if n > countCap {
		return fmt.Sprintf("more than %d app passwords", countCap)
	}
	return fmt.Sprintf("%d app passwords", n)
}

// ResetKey is the way out when the key file of an existing store is lost
// for good: it deletes every app password, every admin token and the
// recorded fingerprint,
// moves an existing key file aside (to KEYFILE.replaced-TIMESTAMP) and
// creates a new key as Migrate does for a new store. It returns the number
// of app passwords deleted. Users must create new app passwords afterwards.
func (s *Store) ResetKey(ctx context.Context) (deleted int, err error) {
	path := s.opts.KeyFile
	if path == "" {
		return 0, fail(ErrInvalid, "store: reset key: key_file is empty: set key_file in the configuration")
	}
	if _, err := s.Migrate(ctx); err != nil && !errors.Is(err, ErrKeyMismatch) {
		return 0, err
	}
	s.setKey(nil)
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("store: reset key: begin: %w", err)
	}
	defer rollback(tx)
	res, err := tx.ExecContext(ctx, `DELETE FROM app_passwords`)
	if err != nil {
		return 0, fmt.Errorf("store: reset key: delete app passwords: %w", err)
	}
	n, _ := res.RowsAffected()
	// Admin tokens are keyed hashes under the old key too: none could
	// match again.
	if _, err := tx.ExecContext(ctx, `DELETE FROM admin_tokens`); err != nil {
		return 0, fmt.Errorf("store: reset key: delete admin tokens: %w", err)
	}
	if _, err := tx.ExecContext(ctx, tx.Rebind(`DELETE FROM settings WHERE name = ?`), settingKeyFingerprint); err != nil {
		return 0, fmt.Errorf("store: reset key: forget fingerprint: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("store: reset key: commit: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		aside := fmt.Sprintf("%s.replaced-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if err := os.Rename(path, aside); err != nil {
			return int(n), fmt.Errorf("store: reset key: move old key file aside: %w (move it yourself, then run passgate migrate)", err)
		}
	}
	if _, err := s.Migrate(ctx); err != nil {
		return int(n), err
	}
	return int(n), nil
}

// loadOrCreateKey reads the key file, or creates it with a new random key
// when it does not exist.
func loadOrCreateKey(path string) ([]byte, error) {
	key, err := readKey(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key = make([]byte, apppass.KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("store: key file %q: random key: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return readKey(path) // another instance was quicker
	}
	if err != nil {
		return nil, fmt.Errorf("store: create key file %q: %w (key_file in the configuration; its directory must exist and be writable)", path, err)
	}
	_, werr := f.WriteString(hex.EncodeToString(key) + "\n")
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("store: write key file %q: %w", path, werr)
	}
	return key, nil
}

// readKey reads a key file. An error for a missing file matches
// fs.ErrNotExist.
func readKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("store: key file %q: %w", path, err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return nil, fail(ErrInvalid, "store: key file %q has mode %04o, so every local user can read the server key: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("store: read key file %q: %w", path, err)
	}
	t := bytes.TrimSpace(b)
	key := make([]byte, apppass.KeySize)
	if len(t) != 2*apppass.KeySize {
		return nil, fail(ErrInvalid, "store: key file %q holds %d bytes, not a passgate key (64 hexadecimal digits): point key_file at the right file or restore it from backup", path, len(b))
	}
	if _, err := hex.Decode(key, t); err != nil {
		return nil, fail(ErrInvalid, "store: key file %q is not a passgate key (64 hexadecimal digits): point key_file at the right file or restore it from backup", path)
	}
	return key, nil
}

// getSetting returns a settings row's value.
func getSetting(ctx context.Context, q sqlx.QueryerContext, name string) (value string, found bool, err error) {
	err = sqlx.GetContext(ctx, q, &value, rebind(q, `SELECT value FROM settings WHERE name = ?`), name)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("store: read setting %s: %w", name, err)
	}
	return value, true, nil
}

// putSetting sets a settings row's value.
func putSetting(ctx context.Context, q sqlx.ExecerContext, name, value string) error {
	_, err := q.ExecContext(ctx, rebind(q, `INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`), name, value, now())
	if err != nil {
		return fmt.Errorf("store: write setting %s: %w", name, err)
	}
	return nil
}

// rebind binds query for q's driver when q knows it.
func rebind(q any, query string) string {
	if b, ok := q.(interface{ Rebind(string) string }); ok {
		return b.Rebind(query)
	}
	return query
}
