package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
)

// pgBase is the superuser URL of the PostgreSQL cluster that TestMain
// started (or found in $PASSGATE_TEST_POSTGRES) for this test binary.
var pgBase string

// dbSeq numbers the PostgreSQL databases of this test binary.
var dbSeq atomic.Int64

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	base, stop, err := testenv.Postgres(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: backends/store tests run against PostgreSQL too: %v\n", err)
		return 1
	}
	defer stop()
	pgBase = base
	return m.Run()
}

// drivers are the stores every contract test runs against.
var drivers = []string{store.DriverSQLite, store.DriverPostgres}

// fixture is one fresh, empty database of one driver plus a key file path
// in a temporary directory (the file itself is not created).
type fixture struct {
	driver  string
	dsn     string
	keyFile string
}

func newFixture(tb testing.TB, driver string) *fixture {
	tb.Helper()
	dir := tb.TempDir()
	f := &fixture{driver: driver, keyFile: filepath.Join(dir, "passgate.key")}
	switch driver {
	case store.DriverSQLite:
		f.dsn = filepath.Join(dir, "passgate.db")
	case store.DriverPostgres:
		name := fmt.Sprintf("passgate_t%d_%d", os.Getpid(), dbSeq.Add(1))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		dsn, err := testenv.CreateDatabase(ctx, pgBase, name)
		if err != nil {
			tb.Fatal(err)
		}
		f.dsn = dsn
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := testenv.DropDatabase(ctx, pgBase, name); err != nil {
				tb.Error(err)
			}
		})
	default:
		tb.Fatalf("unknown driver %q", driver)
	}
	return f
}

func (f *fixture) options(mods ...func(*store.Options)) store.Options {
	o := store.Options{Driver: f.driver, DSN: f.dsn, KeyFile: f.keyFile}
	for _, m := range mods {
		m(&o)
	}
	return o
}

// open opens the fixture's store without migrating and closes it when the
// test ends.
func (f *fixture) open(tb testing.TB, mods ...func(*store.Options)) *store.Store {
	tb.Helper()
	s, err := store.Open(context.Background(), f.options(mods...))
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

// journal opens and migrates the fixture's store under a Journal that
// logs into the returned buffer. Closing is the test's: the Journal's
// Close closes the store.
func (f *fixture) journal(tb testing.TB) (*store.Journal, *lockedBuffer) {
	tb.Helper()
	s, err := store.Open(context.Background(), f.options())
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	if _, err := s.Migrate(context.Background()); err != nil {
		tb.Fatalf("Migrate: %v", err)
	}
	logs := &lockedBuffer{}
	return store.NewJournal(s, slog.New(slog.NewTextHandler(logs, nil))), logs
}

// migrated opens and migrates the fixture's store.
func (f *fixture) migrated(tb testing.TB, mods ...func(*store.Options)) *store.Store {
	tb.Helper()
	s := f.open(tb, mods...)
	if _, err := s.Migrate(context.Background()); err != nil {
		tb.Fatalf("Migrate: %v", err)
	}
	return s
}
