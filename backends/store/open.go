package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq"  // driver "postgres"
	_ "modernc.org/sqlite" // driver "sqlite"

	"github.com/passgate/passgate/backends/apppass"
)

// Drivers accepted in Options.Driver.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// DefaultMaxAppPasswords is the per-user limit when Options.MaxAppPasswords
// is 0.
const DefaultMaxAppPasswords = 40

// postgresMaxOpenConns bounds the connections one Store opens to
// PostgreSQL, so that several passgate instances under load leave room on
// the server (its default max_connections is 100).
const postgresMaxOpenConns = 20

// sqliteMaxIdleConns is how many SQLite connections the pool keeps open
// while idle. database/sql keeps 2 by default: under a few concurrent
// logins every other read then opened a new connection (its pragmas and
// a fresh parse of the schema) and prepared its statements again, which
// cost more than the reads themselves. The connections are dropped after
// sqliteConnMaxIdleTime unused.
const (
	sqliteMaxIdleConns    = 16
	sqliteConnMaxIdleTime = 5 * time.Minute
)

// Store is passgate's state in SQLite or PostgreSQL. It is safe for
// concurrent use. Open connects; Migrate brings the schema up to date and
// loads the server key, which every app-password method needs.
type Store struct {
	db         *sqlx.DB
	driver     string
	opts       Options
	maxApp     int
	defaultMFA MFAState
	keys       atomic.Pointer[storeKeys] // set by Migrate (key), nil until then

	findQuery string                    // the login's lookup, bound for the driver once
	findStmt  atomic.Pointer[sqlx.Stmt] // findQuery prepared on first use (findStmtFor)

	hot hotStmts // statements of the login path, prepared on first use
}

// hotStmts caches the prepared statements of the queries that every login
// runs, so that SQLite does not parse them again each time.
type hotStmts struct {
	mu    sync.Mutex
	stmts map[string]*sqlx.Stmt
}

// hotStmt returns query (written with ?) prepared for the driver.
func (s *Store) hotStmt(ctx context.Context, query string) (*sqlx.Stmt, error) {
	s.hot.mu.Lock()
	defer s.hot.mu.Unlock()
	if st, ok := s.hot.stmts[query]; ok {
		return st, nil
	}
	st, err := s.db.PreparexContext(ctx, s.db.Rebind(query))
	if err != nil {
		return nil, fmt.Errorf("store: prepare: %w", err)
	}
	if s.hot.stmts == nil {
		s.hot.stmts = make(map[string]*sqlx.Stmt)
	}
	s.hot.stmts[query] = st
	return st, nil
}

// runCtx is the context to run a login's statements with: ctx itself on
// PostgreSQL, where a statement waits for the network and ctx must be
// able to end it; on SQLite, ctx without its cancellation. There a
// statement runs in this process and takes microseconds, a read in WAL
// mode waits for no lock and a write's wait for the lock is bounded by
// busy_timeout (10 s); yet for a context that can end, database/sql and
// the driver each start a goroutine per statement to watch it, which
// cost a login more than its read. A ctx that has ended already is an
// error either way.
func (s *Store) runCtx(ctx context.Context) (context.Context, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: %w", context.Cause(ctx))
	}
	if s.driver == DriverSQLite && ctx.Done() != nil {
		return context.WithoutCancel(ctx), nil
	}
	return ctx, nil
}

// Open connects to the store that opts names and checks that it answers.
// It does not change the database: call Migrate before use.
//
// For SQLite, opts.DSN is a file name; the file is created if missing and
// opened in WAL mode with foreign keys on, IMMEDIATE transactions (so that
// the per-user limit holds under concurrent creation) and a 10 s busy
// timeout. For PostgreSQL, opts.DSN is a lib/pq URL or key=value string
// (set sslmode explicitly); at most 20 connections are opened.
func Open(ctx context.Context, opts Options) (*Store, error) {
	s := &Store{opts: opts, maxApp: opts.MaxAppPasswords, defaultMFA: opts.DefaultMFA}
	switch strings.ToLower(opts.Driver) {
	case "", DriverSQLite, "sqlite3":
		s.driver = DriverSQLite
	case DriverPostgres, "postgresql":
		s.driver = DriverPostgres
	default:
		return nil, fail(ErrInvalid, "store: open: store.driver %q is not known: use sqlite or postgres", opts.Driver)
	}
	if s.maxApp == 0 {
		s.maxApp = DefaultMaxAppPasswords
	}
	if s.maxApp < 0 {
		return nil, fail(ErrInvalid, "store: open: policy.max_app_passwords is %d: use a positive number (default %d)", s.maxApp, DefaultMaxAppPasswords)
	}
	if s.defaultMFA == "" {
		s.defaultMFA = MFADisabled
	}
	st, err := ParseMFAState(string(s.defaultMFA))
	if err != nil {
		return nil, fmt.Errorf("store: open: policy.default_mfa: %w: %w", err, ErrInvalid)
	}
	s.defaultMFA = st
	if opts.DSN == "" {
		return nil, fail(ErrInvalid, "store: open: store.dsn is empty: give a file name for sqlite or a postgres:// URL")
	}

	if s.driver == DriverSQLite && (strings.Contains(opts.DSN, ":memory:") || strings.Contains(opts.DSN, "mode=memory")) {
		// Each pooled connection would see its own empty database.
		return nil, fail(ErrInvalid, "store: open: store.dsn %q is an in-memory SQLite database, which the store cannot share between connections: give a file name (a temporary file for a demo)", opts.DSN)
	}
	var raw *sql.DB
	switch s.driver {
	case DriverSQLite:
		// The file holds keyed hashes and the audit trail: create it
		// readable by its owner only (SQLite gives the -wal and -shm
		// files the same mode).
		if !strings.HasPrefix(opts.DSN, "file:") {
			if f, cerr := os.OpenFile(opts.DSN, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); cerr == nil {
				f.Close()
			}
		}
		raw, err = sql.Open("sqlite", sqliteDSN(opts.DSN))
		if err == nil {
			raw.SetMaxIdleConns(sqliteMaxIdleConns)
			raw.SetConnMaxIdleTime(sqliteConnMaxIdleTime)
		}
	case DriverPostgres:
		raw, err = sql.Open("postgres", opts.DSN)
		if err == nil {
			raw.SetMaxOpenConns(postgresMaxOpenConns)
			raw.SetMaxIdleConns(postgresMaxOpenConns)
			raw.SetConnMaxIdleTime(5 * time.Minute)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w (check store.dsn)", s.driver, err)
	}
	if err := raw.PingContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("store: open %s store %s: %w (check store.dsn and that the database is reachable)", s.driver, describeDSN(s.driver, opts.DSN), err)
	}
	// sqlx.NewDb picks the placeholder style from the driver name without
	// touching sqlx's global driver table: "postgres" binds $1, an unknown
	// name (our "sqlite") keeps the ? that SQLite understands.
	s.db = sqlx.NewDb(raw, s.driver)
	s.findQuery = s.db.Rebind(`SELECT ` + appPasswordColumns + ` FROM app_passwords WHERE user_key = ? AND hash = ?`)
	return s, nil
}

// sqliteDSN turns a file name into modernc.org/sqlite's URI form with the
// settings the store relies on.
func sqliteDSN(path string) string {
	path = strings.TrimPrefix(path, "file:")
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + r.Replace(path) +
		"?_txlock=immediate&_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_time_format=sqlite"
}

// describeDSN names the database for an error without its password.
func describeDSN(driver, dsn string) string {
	if driver == DriverSQLite {
		return fmt.Sprintf("%q", dsn)
	}
	if i := strings.Index(dsn, "@"); i >= 0 && strings.Contains(dsn, "://") {
		return fmt.Sprintf("%q", dsn[:strings.Index(dsn, "://")+3]+"…"+dsn[i:])
	}
	return "(store.dsn)"
}

// Close closes the database connections.
func (s *Store) Close() error {
	if st := s.findStmt.Swap(nil); st != nil {
		_ = st.Close()
	}
	s.hot.mu.Lock()
	for _, st := range s.hot.stmts {
		_ = st.Close()
	}
	s.hot.stmts = nil
	s.hot.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Ping checks that the database answers a query: readiness checks use
// it.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("store: %s store does not answer: %w (check store.dsn and that the database is reachable)", s.driver, err)
	}
	return nil
}

// Driver returns "sqlite" or "postgres".
func (s *Store) Driver() string { return s.driver }

// MaxAppPasswords returns the per-user limit on app passwords.
func (s *Store) MaxAppPasswords() int { return s.maxApp }

// storeKeys is the server key's hasher and the keys derived from it,
// derived once when the key is loaded (never changed afterwards: a new
// key is a new storeKeys).
type storeKeys struct {
	h          *apppass.Hasher
	lockoutTag []byte // h.DeriveKey(purposeLockoutTag)
}

// setKey makes h the store's key (nil: none), with its derived keys.
func (s *Store) setKey(h *apppass.Hasher) {
	if h == nil {
		s.keys.Store(nil)
		return
	}
	s.keys.Store(&storeKeys{h: h, lockoutTag: h.DeriveKey(purposeLockoutTag)})
}

// loadedKeys returns the keys that Migrate loaded.
func (s *Store) loadedKeys() (*storeKeys, error) {
	k := s.keys.Load()
	if k == nil {
		return nil, fail(ErrNoKey, "store: the server key is not loaded: call Migrate first (passgate serve and passgate migrate do)")
	}
	return k, nil
}

// key returns the hasher that Migrate loaded.
func (s *Store) key() (*apppass.Hasher, error) {
	k, err := s.loadedKeys()
	if err != nil {
		return nil, err
	}
	return k.h, nil
}

// forUpdate is the row-lock suffix of a SELECT inside a transaction. SQLite
// needs none: its IMMEDIATE transactions already hold the write lock.
func (s *Store) forUpdate() string {
	if s.driver == DriverPostgres {
		return " FOR UPDATE"
	}
	return ""
}

// now returns the current time as the store keeps it.
func now() time.Time { return dbTime(time.Now()) }

// dbTime returns t in UTC, cut to microseconds (PostgreSQL's precision), so
// that both stores give back exactly what they were given.
func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// cleanText makes client-supplied text storable in both stores: valid
// UTF-8 (PostgreSQL refuses anything else), no NUL or other control
// characters, at most max bytes.
func cleanText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// opError is an error with an operator-facing message that still matches
// its sentinel with errors.Is.
type opError struct {
	msg string
	err error
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.err }

// fail returns an error with the formatted message that wraps sentinel.
func fail(sentinel error, format string, args ...any) error {
	return &opError{msg: fmt.Sprintf(format, args...), err: sentinel}
}

// rollback ends tx after a failure; its own error adds nothing.
// It is a no-op after Commit.
func rollback(tx *sqlx.Tx) { _ = tx.Rollback() }

// syncNow makes the changes committed so far durable on SQLite.
//
// SQLite runs in WAL mode with synchronous=NORMAL: a commit is safe from
// corruption and from a crash of passgate, but the last commits before a
// power loss may roll back. That is the right trade for the hot path (the
// last-use and audit rows of every login) but not for a change that takes
// access away: a deleted app password must not come back. Those changes
// call syncNow, whose checkpoint syncs the write-ahead log to disk.
// PostgreSQL commits are durable already.
func (s *Store) syncNow(ctx context.Context) {
	if s.driver != DriverSQLite {
		return
	}
	// A busy reader may keep the checkpoint from copying every frame; the
	// log is synced before the copy all the same.
	_, _ = s.db.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
}
