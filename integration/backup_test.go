package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
)

// mustRun runs a command-line tool as the guide does and returns its
// combined output; a failure ends the test with that output.
func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestBackupRestore follows docs/deployment.md, section 6, for both
// stores: with passgate serving, it backs up the store (sqlite3 .backup,
// pg_dump -Fc) and the key file apart, restores both into a fresh
// database (install the copy, pg_restore into a new database), starts
// passgate on it and logs in over IMAP with an app password created
// before the backup. An app password deleted after the backup comes back
// with the restore, as the guide warns, and is found in the old store's
// audit trail, where the guide says to look for it. A restored store
// refuses a key file other than the one backed up with it.
func TestBackupRestore(t *testing.T) {
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			backups := t.TempDir()
			pc := passgateConfig{}
			var base string
			if driver == "postgres" {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				var stopPG func()
				var err error
				if base, stopPG, err = testenv.Postgres(ctx); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(stopPG)
				name := fmt.Sprintf("passgate_backup_%d_%d", os.Getpid(), time.Now().UnixNano())
				if pc.postgresDSN, err = testenv.CreateDatabase(ctx, base, name); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
			}
			old := startPassgate(t, pc)
			old.enforce(t, "alice")
			pw := old.appPassword(t, "alice", "phone")
			gone := old.appPassword(t, "alice", "tablet")
			if got := old.rawLoginFrom(t, "127.0.0.151", "alice", pw); !strings.HasPrefix(got, "a OK") {
				t.Fatalf("login before the backup: %q", got)
			}

			// The backup, taken while passgate serves; the key file apart.
			keyBackup := filepath.Join(backups, "passgate.key.backup")
			mustRun(t, "install", "-m", "0600", filepath.Join(old.dir, "passgate.key"), keyBackup)
			var restored passgateConfig
			switch driver {
			case "sqlite":
				copyFile := filepath.Join(backups, "passgate.db")
				mustRun(t, "sqlite3", filepath.Join(old.dir, "passgate.db"), fmt.Sprintf(".backup '%s'", copyFile))
				// The restore, into a directory where no store was.
				fresh := filepath.Join(t.TempDir(), "passgate.db")
				mustRun(t, "install", "-m", "0600", copyFile, fresh)
				restored.sqlitePath = fresh
			case "postgres":
				dump := filepath.Join(backups, "passgate.dump")
				mustRun(t, "pg_dump", "-Fc", "-d", pc.postgresDSN, "-f", dump)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				name := fmt.Sprintf("passgate_restored_%d_%d", os.Getpid(), time.Now().UnixNano())
				dsn, err := testenv.CreateDatabase(ctx, base, name)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
				mustRun(t, "pg_restore", "--no-owner", "-d", dsn, dump)
				restored.postgresDSN = dsn
			}

			// After the backup: a deletion the backup does not know.
			old.admin(t, "app-password", "delete", "alice", "--label", "tablet")
			if got := old.rawLoginFrom(t, "127.0.0.151", "alice", gone); got != "a "+uniformFailure+"\r\n" {
				t.Fatalf("login with the deleted app password: %q", got)
			}
			if changes := old.admin(t, "audit", "--user", "alice", "--kind", "change", "--since", "1h"); !strings.Contains(changes, "tablet") {
				t.Fatalf("the old store's audit does not list the deletion of \"tablet\":\n%s", changes)
			}

			// passgate on the restored store, with the backed-up key.
			restored.keyFile = keyBackup
			p := startPassgate(t, restored)
			if out := p.admin(t, "migrate"); !strings.Contains(out, "is up to date") {
				t.Errorf("migrate on the restored store: %q", out)
			}
			if got := p.rawLoginFrom(t, "127.0.0.152", "alice", pw); !strings.HasPrefix(got, "a OK") {
				t.Fatalf("login with the old app password on the restored store: %q", got)
			}
			if got := p.rawLoginFrom(t, "127.0.0.152", "alice", gone); !strings.HasPrefix(got, "a OK") {
				t.Fatalf("the app password deleted after the backup, on the restored store: %q (the guide says it comes back)", got)
			}
			p.admin(t, "app-password", "delete", "alice", "--label", "tablet")
			if got := p.rawLoginFrom(t, "127.0.0.152", "alice", gone); got != "a "+uniformFailure+"\r\n" {
				t.Fatalf("login with the app password deleted again: %q", got)
			}

			// Another key file: the restored store refuses it.
			cfg, err := os.ReadFile(p.config)
			if err != nil {
				t.Fatal(err)
			}
			other := filepath.Join(t.TempDir(), "passgate.yaml")
			text := strings.Replace(string(cfg), "key_file: "+strconv.Quote(keyBackup), "key_file: "+strconv.Quote(filepath.Join(filepath.Dir(other), "new.key")), 1)
			if text == string(cfg) {
				t.Fatalf("no key_file line to replace in:\n%s", cfg)
			}
			if err := os.WriteFile(other, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr strings.Builder
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			if code := cli.Run(ctx, []string{"migrate", "--config", other}, &stdout, &stderr); code == 0 || !strings.Contains(stderr.String(), "restore the key file from backup") {
				t.Fatalf("migrate of the restored store with a new key file: exit %d\n%s%s", code, stdout.String(), stderr.String())
			}
		})
	}
}
