package integration

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/integration/testenv"
)

// oldSchema is the last migration of the older passgate that
// TestUpgradeFromOlderSchema upgrades from: the portal's tables, before the
// admin center, the structured audit and the shared lockout.
const oldSchema = "0002_portal"

// olderStore writes, as the passgate of oldSchema did, a store at that
// schema in the database dsn of driver: the embedded migrations up to
// oldSchema (read from the repository), their rows in schema_migrations,
// the key file and its fingerprint, user alice (enforced) and one app
// password labelled "phone", which it returns.
func olderStore(t *testing.T, driver, dsn, keyFile string) string {
	t.Helper()
	open := dsn
	if driver == "sqlite" {
		open = "file:" + dsn + "?_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_time_format=sqlite"
	}
	db, err := sql.Open(driver, open)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	bind := func(q string) string {
		if driver == "sqlite" {
			return q
		}
		for i := 1; strings.Contains(q, "?"); i++ {
			q = strings.Replace(q, "?", fmt.Sprintf("$%d", i), 1)
		}
		return q
	}
	ts := map[string]string{"sqlite": "TIMESTAMP", "postgres": "TIMESTAMPTZ"}[driver]
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(bind(q), args...); err != nil {
			t.Fatalf("older store: %s: %v", strings.SplitN(q, "\n", 2)[0], err)
		}
	}
	exec(`CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at ` + ts + ` NOT NULL)`)
	now := time.Now().UTC().Truncate(time.Microsecond)
	files, err := filepath.Glob(filepath.Join("..", "backends", "store", "migrations", driver, "*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations for %s (%v)", driver, err)
	}
	slices.Sort(files)
	for _, f := range files {
		v := strings.TrimSuffix(filepath.Base(f), ".sql")
		if v > oldSchema {
			break
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		exec(string(b))
		exec(`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, now)
	}

	key := make([]byte, apppass.KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, err := apppass.NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)`, "key_fingerprint", h.Fingerprint(), now)
	exec(`INSERT INTO users (name_key, name, mfa, created_at, updated_at) VALUES (?, ?, ?, ?, ?)`, "alice", "alice", "enforced", now, now)
	secret, err := apppass.Generate()
	if err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO app_passwords (user_key, user_name, label, label_key, scopes, hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		"alice", "alice", "phone", "phone", "imap,smtp,ldap", h.Hash("alice", secret), now)
	return apppass.Format(secret)
}

// schemaVersions lists the versions recorded in a store's
// schema_migrations.
func schemaVersions(t *testing.T, driver, dsn string) []string {
	t.Helper()
	open := dsn
	if driver == "sqlite" {
		open = "file:" + dsn + "?mode=ro"
	}
	db, err := sql.Open(driver, open)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var vs []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestUpgradeFromOlderSchema follows docs/deployment.md, section 7, from a
// store that an older passgate left at migration 0002, on both stores:
// the backup taken before the upgrade (sqlite3 .backup, pg_dump -Fc), then
// the schema brought up to date by "passgate migrate" (which names each
// migration it applies), by "serve" at start, or by any admin command;
// the old app password logs in over IMAP afterwards. Rollback: the backup
// restored is the store at 0002 again, with its data, which the older
// passgate reads and the newer one upgrades again.
func TestUpgradeFromOlderSchema(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "backends", "store", "migrations", "sqlite", "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	var newer []string
	for _, f := range files {
		if v := strings.TrimSuffix(filepath.Base(f), ".sql"); v > oldSchema {
			newer = append(newer, v)
		}
	}
	slices.Sort(newer)
	if len(newer) == 0 {
		t.Fatalf("no migration after %s", oldSchema)
	}
	for _, driver := range []string{"sqlite", "postgres"} {
		for _, by := range []string{"migrate", "serve", "admin-command"} {
			t.Run(driver+"/"+by, func(t *testing.T) {
				dir := t.TempDir()
				keyFile := filepath.Join(dir, "passgate.key")
				var dsn, base, name string
				if driver == "sqlite" {
					dsn = filepath.Join(dir, "passgate.db")
				} else {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					var stopPG func()
					if base, stopPG, err = testenv.Postgres(ctx); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(stopPG)
					name = fmt.Sprintf("passgate_upgrade_%d_%d", os.Getpid(), time.Now().UnixNano())
					if dsn, err = testenv.CreateDatabase(ctx, base, name); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
				}
				pw := olderStore(t, driver, dsn, keyFile)
				if got := schemaVersions(t, driver, dsn); !slices.Equal(got, []string{"0001_init", oldSchema}) {
					t.Fatalf("the older store's schema: %v", got)
				}

				// The backup before the upgrade.
				backup := filepath.Join(dir, "before-upgrade")
				if driver == "sqlite" {
					mustRun(t, "sqlite3", dsn, fmt.Sprintf(".backup '%s'", backup))
				} else {
					mustRun(t, "pg_dump", "-Fc", "-d", dsn, "-f", backup)
				}

				pc := passgateConfig{keyFile: keyFile}
				if driver == "sqlite" {
					pc.sqlitePath = dsn
				} else {
					pc.postgresDSN = dsn
				}
				want := append([]string{"0001_init", oldSchema}, newer...)
				switch by {
				case "migrate":
					pc.beforeServe = func(p *passgateInstance) {
						out := p.admin(t, "migrate")
						for _, v := range newer {
							if !strings.Contains(out, "Applied migration "+v+" to the "+driver+" store") {
								t.Errorf("passgate migrate does not name migration %s:\n%s", v, out)
							}
						}
						if out := p.admin(t, "migrate"); !strings.Contains(out, "is up to date") {
							t.Errorf("passgate migrate a second time: %q", out)
						}
					}
				case "serve":
					pc.beforeServe = func(*passgateInstance) {} // serve alone
				case "admin-command":
					pc.beforeServe = func(p *passgateInstance) {
						if out := p.admin(t, "user", "list"); !strings.Contains(out, "alice") {
							t.Errorf("passgate user list on the older store: %q", out)
						}
						if got := schemaVersions(t, driver, dsn); !slices.Equal(got, want) {
							t.Errorf("after passgate user list, the schema is %v, want %v", got, want)
						}
					}
				}
				p := startPassgate(t, pc)
				if got := schemaVersions(t, driver, dsn); !slices.Equal(got, want) {
					t.Fatalf("schema after the upgrade by %s: %v, want %v", by, got, want)
				}
				if got := p.rawLoginFrom(t, "127.0.0.161", "alice", pw); !strings.HasPrefix(got, "a OK") {
					t.Fatalf("the older store's app password after the upgrade: %q", got)
				}
				p.admin(t, "user", "add", "bob", "--mfa", "enforced") // written by the newer version only

				// Rollback: stop passgate, restore the backup taken before
				// the upgrade (the older package would be installed here).
				p.cancel()
				select {
				case code := <-p.done:
					p.done <- code
				case <-time.After(patience):
					t.Fatalf("passgate serve did not stop within %v", patience)
				}
				if driver == "sqlite" {
					mustRun(t, "install", "-m", "0600", backup, dsn)
					mustRun(t, "rm", "-f", dsn+"-wal", dsn+"-shm")
				} else {
					// Into a new, empty database: pg_restore --clean only
					// drops what the dump holds, and would leave the
					// tables of the newer migrations behind.
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					if err := testenv.DropDatabase(ctx, base, name); err != nil {
						t.Fatal(err)
					}
					if _, err := testenv.CreateDatabase(ctx, base, name); err != nil {
						t.Fatal(err)
					}
					mustRun(t, "pg_restore", "--no-owner", "-d", dsn, backup)
				}
				if got := schemaVersions(t, driver, dsn); !slices.Equal(got, []string{"0001_init", oldSchema}) {
					t.Fatalf("schema after the rollback: %v, want the older one", got)
				}
				// The newer version upgrades the restored store again and
				// finds the older store's data, and none of the newer's.
				restored := startPassgate(t, passgateConfig{keyFile: keyFile, sqlitePath: pc.sqlitePath, postgresDSN: pc.postgresDSN})
				if got := restored.rawLoginFrom(t, "127.0.0.162", "alice", pw); !strings.HasPrefix(got, "a OK") {
					t.Fatalf("the app password after the rollback and a new upgrade: %q", got)
				}
				if out := restored.admin(t, "user", "list"); strings.Contains(out, "bob") {
					t.Errorf("a user added after the upgrade is still there after the rollback:\n%s", out)
				}
			})
		}
	}
}
