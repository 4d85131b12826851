package store

import (
	"context"
	"database/sql/driver"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/passgate/passgate/backends/apppass"
)

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

// migrateLockID is the PostgreSQL advisory lock key that serialises Migrate
// across passgate instances ("passgate" in ASCII).
const migrateLockID int64 = 0x7061737367617465

// migration is one embedded schema change.
type migration struct {
	version string // file name without .sql, e.g. "0001_init"
	sql     string
}

// migrations returns the embedded migrations of the store's dialect in
// order.
func (s *Store) migrations() ([]migration, error) {
	dir := path.Join("migrations", s.driver)
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: read embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		b, err := fs.ReadFile(migrationFiles, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("store: migrate: read %s: %w", e.Name(), err)
		}
		ms = append(ms, migration{version: strings.TrimSuffix(e.Name(), ".sql"), sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Migrate applies the embedded migrations that the database lacks and then
// sets up or checks the server key. It returns the versions it applied:
// nil when the schema was already current. Several passgate instances may
// call it at once on one PostgreSQL: a session-level advisory lock lets one
// migrate while the others wait; on SQLite an IMMEDIATE transaction does
// the same. Migrate must succeed before CreateAppPassword and
// FindAppPassword work (they fail with ErrNoKey).
//
// The key file (Options.KeyFile) holds the server key: 32 random bytes
// written as 64 lower-case hexadecimal digits and a newline, mode 0600 (a
// file of exactly 32 raw bytes is read too; a file that others may read is
// refused). Every instance sharing a store needs the same file. The store
// records only the key's fingerprint (apppass.Hasher.Fingerprint), never
// the key. On a store without a fingerprint Migrate loads the key file, or
// creates it (O_EXCL, 0600) when missing, and records the fingerprint. On a
// store with one, the file must exist and match; otherwise Migrate fails
// with ErrKeyMismatch and never makes a new key, since every app password
// hashed under the old one would silently stop working. ResetKey is the
// deliberate way out when a key is lost for good.
//
// On a store that is up to date with its key recorded — every open but
// the first after an upgrade — Migrate is one read on the connection
// that Open made: no lock, no transaction, no write, so that every
// command opens a store of any size in the same few round trips and a
// read-only command never waits for a writer.
func (s *Store) Migrate(ctx context.Context) (applied []string, err error) {
	ms, err := s.migrations()
	if err != nil {
		return nil, err
	}
	if s.upToDate(ctx, ms) {
		return nil, nil
	}
	conn, err := s.db.Connx(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: connect: %w", err)
	}
	defer conn.Close()
	if s.driver == DriverPostgres {
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrateLockID); err != nil {
			return nil, fmt.Errorf("store: migrate: wait for other instances' migration (advisory lock): %w", err)
		}
		defer func() {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, uerr := conn.ExecContext(uctx, `SELECT pg_advisory_unlock($1)`, migrateLockID); uerr != nil {
				// A connection that may still hold the lock must not go
				// back to the pool: make database/sql discard it.
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
		}()
	}

	applied, err = s.applyMigrations(ctx, conn, ms)
	if err != nil {
		return nil, err
	}
	if err := s.setUpKey(ctx, conn); err != nil {
		return applied, err
	}
	return applied, nil
}

// upToDate reports whether the store has every migration of ms and a
// recorded key fingerprint that the key file matches; if so it loads the
// key as setUpKey does. It reads both in one query (a single round trip
// on PostgreSQL) and takes no lock. Anything else — a new store, a
// missing migration, no or another fingerprint, an unreadable key file —
// is false, and Migrate's locked path deals with it (and reports it).
func (s *Store) upToDate(ctx context.Context, ms []migration) bool {
	var rows []string
	// A version never starts with "key:" (they are NNNN_name).
	if err := s.db.SelectContext(ctx, &rows, `SELECT version FROM schema_migrations
		UNION ALL SELECT 'key:' || value FROM settings WHERE name = '`+settingKeyFingerprint+`'`); err != nil {
		return false
	}
	have := make(map[string]bool, len(rows))
	fp := ""
	for _, r := range rows {
		if f, ok := strings.CutPrefix(r, "key:"); ok {
			fp = f
			continue
		}
		have[r] = true
	}
	for _, m := range ms {
		if !have[m.version] {
			return false
		}
	}
	if fp == "" || s.opts.KeyFile == "" {
		return false
	}
	key, err := readKey(s.opts.KeyFile)
	if err != nil {
		return false
	}
	h, err := apppass.NewHasher(key)
	if err != nil || h.Fingerprint() != fp {
		return false
	}
	s.setKey(h)
	return true
}

// applyMigrations runs the missing migrations in one transaction on conn.
func (s *Store) applyMigrations(ctx context.Context, conn *sqlx.Conn, ms []migration) ([]string, error) {
	tx, err := conn.BeginTxx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("store: migrate: begin: %w", err)
	}
	defer rollback(tx)
	ts := "TIMESTAMP"
	if s.driver == DriverPostgres {
		ts = "TIMESTAMPTZ"
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version TEXT PRIMARY KEY,
		applied_at `+ts+` NOT NULL)`); err != nil {
		return nil, fmt.Errorf("store: migrate: create schema_migrations: %w", err)
	}
	var done []string
	if err := tx.SelectContext(ctx, &done, `SELECT version FROM schema_migrations`); err != nil {
		return nil, fmt.Errorf("store: migrate: read schema_migrations: %w", err)
	}
	have := make(map[string]bool, len(done))
	for _, v := range done {
		have[v] = true
	}
	var applied []string
	for _, m := range ms {
		if have[m.version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return nil, fmt.Errorf("store: migrate: apply %s: %w", m.version, err)
		}
		if _, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`), m.version, now()); err != nil {
			return nil, fmt.Errorf("store: migrate: record %s: %w", m.version, err)
		}
		applied = append(applied, m.version)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("store: migrate: commit: %w", err)
	}
	return applied, nil
}
