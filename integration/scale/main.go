// Command scale seeds passgate stores of N users through passgate's own
// schema and hashing, and measures what issue 17 asks of a large store:
// serve start to /readyz, an admin command on one user, the first page of
// "user list" and of "audit" (each run 7 times: fastest and median), the
// whole "user list --json" and "audit --jsonl" (rows per second, the
// process's CPU time and peak RSS), the login latency by kind (through the
// policy engine and the store, without a network: say so when quoting it)
// with and without the seeded events, what a login writes (a transaction
// each, or through serve's Journal) and the disk taken per login event,
// before (the schema of version 1) and after (version 5). It prints the
// sizes side by side, and with -baseline a second binary's figures on the
// same store beside them. -workdir keeps the stores and -reuse measures
// them again without seeding.
//
//	go build -o /tmp/pg ./cmd/passgate
//	go run ./integration/scale -passgate /tmp/pg -sizes 1000,100000 -events 10
//	go run ./integration/scale -driver postgres -dsn 'postgres://…/scratch?sslmode=disable' …
//
// On PostgreSQL without -dsn, it starts a throwaway cluster of the test
// harness (integration/testenv: fsync off). A -dsn must name a throwaway
// database: each size starts
// by dropping and recreating its public schema. Users get 3 app passwords
// each, 1 % of them 40; -events is the number of login events per user,
// spread over the last 30 days.
package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lib/pq"
	_ "modernc.org/sqlite"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
)

func main() {
	driver := flag.String("driver", "sqlite", "store driver: sqlite or postgres")
	dsn := flag.String("dsn", "", "PostgreSQL DSN of a throwaway database (postgres only)")
	sizes := flag.String("sizes", "1000,100000", "comma-separated numbers of users")
	events := flag.Int("events", 0, "login events per user to seed (spread over 30 days)")
	bin := flag.String("passgate", "", "passgate binary, for the serve and command-line rows (empty: skipped)")
	baseline := flag.String("baseline", "", "a second passgate binary (e.g. built from an older commit) measured on the same store, in a column of its own")
	logins := flag.Int("logins", 300, "logins measured per kind")
	workdir := flag.String("workdir", "", "keep each size's key, configuration and SQLite file in `DIR`/N (default: a temporary directory, removed)")
	reuse := flag.Bool("reuse", false, "measure the stores that an earlier run left (-workdir, and -dsn on PostgreSQL) without seeding them again")
	imap := flag.Bool("imap", false, "also time IMAP LOGINs through -passgate's serve in front of a throwaway Dovecot, on the seeded store and on a twin with the same users and no events, beside Dovecot directly")
	commands := flag.Bool("commands", true, "time the commands (serve, admin, listings) of -passgate and -baseline; false: only the logins")
	twinDSN := flag.String("twin-dsn", "", "PostgreSQL DSN of a second throwaway database, for -imap's twin store")
	flag.Parse()
	ctx := context.Background()
	if *reuse && (*workdir == "" || *driver == store.DriverPostgres && *dsn == "") {
		fatal(errors.New("-reuse needs the -workdir (and on PostgreSQL the -dsn) of the earlier run"))
	}
	if *imap && (*bin == "" || *driver == store.DriverPostgres && *twinDSN == "") {
		fatal(errors.New("-imap needs -passgate (and on PostgreSQL -twin-dsn)"))
	}
	if *driver == store.DriverPostgres && *dsn == "" {
		// A throwaway cluster of the test harness (fsync off).
		base, stop, err := testenv.Postgres(ctx)
		if err != nil {
			fatal(err)
		}
		defer stop()
		if *dsn, err = testenv.CreateDatabase(ctx, base, "scale"); err != nil {
			stop()
			fatal(err)
		}
	}
	var cols []column
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 100 {
			fatal(fmt.Errorf("-sizes: %q is not a number of users (at least 100)", s))
		}
		c, err := run(ctx, config{driver: *driver, dsn: *dsn, users: n, events: *events, bin: *bin, baseline: *baseline, logins: *logins, workdir: *workdir, reuse: *reuse, imap: *imap, twinDSN: *twinDSN, commands: *commands})
		if err != nil {
			fatal(fmt.Errorf("%d users: %w", n, err))
		}
		cols = append(cols, c...)
	}
	print(os.Stdout, *driver, cols)
}

// fatal reports err and exits. Deferred stops do not run: the throwaway
// cluster is stopped by its own guard when this process dies.
func fatal(err error) {
	fmt.Fprintln(os.Stderr, "scale:", err)
	os.Exit(1)
}

type config struct {
	driver, dsn string
	users       int
	events      int
	bin         string
	baseline    string
	logins      int
	workdir     string
	reuse       bool
	imap        bool   // measureIMAP
	commands    bool   // measureCommands
	twinDSN     string // the twin store's database on PostgreSQL
}

// column is one size's figures, by row name.
type column struct {
	title string
	rows  map[string]string
}

var rowOrder = []string{"seed", "events", "serve start → /readyz", "app-password list (one user)",
	"user list --json: first byte", "audit --json: first byte", "audit --limit 100", "audit --user (one user's events)",
	"user list --json: whole", "user list --json: peak RSS", "audit --jsonl: whole", "audit --jsonl: peak RSS",
	"login good app password p50/p99", "login wrong secret p50/p99", "login unknown user p50/p99",
	"login good app password p50/p99, empty journal", "login wrong secret p50/p99, empty journal", "login unknown user p50/p99, empty journal",
	imapRow(imapKinds[0], imapTargets[0].suffix), imapRow(imapKinds[1], imapTargets[0].suffix), imapRow(imapKinds[2], imapTargets[0].suffix),
	imapRow(imapKinds[0], imapTargets[1].suffix), imapRow(imapKinds[1], imapTargets[1].suffix), imapRow(imapKinds[2], imapTargets[1].suffix),
	imapRow(imapKinds[0], imapTargets[2].suffix), imapRow(imapKinds[1], imapTargets[2].suffix), imapRow(imapKinds[2], imapTargets[2].suffix),
	"login write, a transaction each p50", "login write, journal (group commit)",
	"bytes per login event, schema v1", "bytes per login event, schema v5"}

func print(w io.Writer, driver string, cols []column) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, driver)
	for _, c := range cols {
		fmt.Fprint(tw, "\t", c.title)
	}
	fmt.Fprintln(tw)
	for _, r := range rowOrder {
		fmt.Fprint(tw, r)
		for _, c := range cols {
			v := c.rows[r]
			if v == "" {
				v = "-"
			}
			fmt.Fprint(tw, "\t", v)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// run seeds one size and measures it: one column, and a second one for
// the baseline binary if there is one.
func run(ctx context.Context, cfg config) ([]column, error) {
	col, base, err := runSize(ctx, cfg)
	if cfg.baseline == "" {
		return []column{col}, err
	}
	return []column{col, base}, err
}

func runSize(ctx context.Context, cfg config) (col, base column, err error) {
	col = column{title: fmt.Sprintf("%d users", cfg.users), rows: map[string]string{}}
	base = column{title: fmt.Sprintf("%d users, baseline", cfg.users), rows: map[string]string{}}
	var dir string
	if cfg.workdir == "" {
		if dir, err = os.MkdirTemp("", "passgate-scale-"); err != nil {
			return col, base, err
		}
		defer os.RemoveAll(dir)
	} else {
		dir = filepath.Join(cfg.workdir, strconv.Itoa(cfg.users))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return col, base, err
		}
	}
	opts := store.Options{Driver: cfg.driver, DSN: cfg.dsn, KeyFile: filepath.Join(dir, "passgate.key")}
	if cfg.driver == store.DriverSQLite {
		opts.DSN = filepath.Join(dir, "passgate.db")
	}
	// The twin: the same users without events, for -imap.
	tw := twin{dir: dir + "-empty"}
	if cfg.imap {
		if err := os.MkdirAll(tw.dir, 0o700); err != nil {
			return col, base, err
		}
		if cfg.workdir == "" {
			defer os.RemoveAll(tw.dir)
		}
		tw.opts = store.Options{Driver: cfg.driver, DSN: cfg.twinDSN, KeyFile: filepath.Join(tw.dir, "passgate.key")}
		if cfg.driver == store.DriverSQLite {
			tw.opts.DSN = filepath.Join(tw.dir, "passgate.db")
		}
	}
	if cfg.reuse {
		return col, base, measureAll(ctx, cfg, opts, dir, tw, col, base)
	}
	if cfg.imap {
		if err := seedTwin(ctx, cfg, tw.opts); err != nil {
			return col, base, fmt.Errorf("seed the twin store: %w", err)
		}
	}
	if cfg.driver == store.DriverSQLite {
		for _, f := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(opts.DSN + f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return col, base, err
			}
		}
		if err := os.Remove(opts.KeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return col, base, err
		}
	} else {
		if err := resetPostgres(ctx, cfg.dsn); err != nil {
			return col, base, err
		}
		if err := os.Remove(opts.KeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return col, base, err
		}
	}
	st, err := store.Open(ctx, opts)
	if err != nil {
		return col, base, err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close()
		return col, base, err
	}
	st.Close()
	key, err := readKey(opts.KeyFile)
	if err != nil {
		return col, base, err
	}
	h, err := apppass.NewHasher(key)
	if err != nil {
		return col, base, err
	}
	db, err := sql.Open(sqlDriver(cfg.driver), sqlDSN(cfg.driver, opts.DSN))
	if err != nil {
		return col, base, err
	}
	defer db.Close()

	start := time.Now()
	apps, err := seed(ctx, db, cfg, h)
	if err != nil {
		return col, base, fmt.Errorf("seed: %w", err)
	}
	col.rows["seed"] = fmt.Sprintf("%s (%d app passwords)", round(time.Since(start)), apps)
	if cfg.events > 0 {
		// The same logins before the events are seeded: the journal's
		// size should not show in them.
		st, err := store.Open(ctx, opts)
		if err != nil {
			return col, base, err
		}
		empty := map[string]string{}
		if _, err = st.Migrate(ctx); err == nil {
			err = measureLogins(ctx, st, cfg, empty)
		}
		st.Close()
		if err != nil {
			return col, base, err
		}
		for k, v := range empty {
			col.rows[k+", empty journal"] = v
		}

		start = time.Now()
		n, err := seedEvents(ctx, db, cfg)
		if err != nil {
			return col, base, fmt.Errorf("seed events: %w", err)
		}
		col.rows["events"] = fmt.Sprintf("%d in %s", n, round(time.Since(start)))
		v1, v5, err := bytesPerEvent(ctx, db, cfg, n)
		if err != nil {
			return col, base, fmt.Errorf("measure bytes per event: %w", err)
		}
		col.rows["bytes per login event, schema v1"], col.rows["bytes per login event, schema v5"] = v1, v5
	}

	return col, base, measureAll(ctx, cfg, opts, dir, tw, col, base)
}

// twin is a store with the same users as the seeded one and no events.
type twin struct {
	opts store.Options
	dir  string
}

// seedTwin seeds the users of cfg into a new store at opts, without
// events.
func seedTwin(ctx context.Context, cfg config, opts store.Options) error {
	if cfg.driver == store.DriverSQLite {
		for _, f := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(opts.DSN + f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	} else if err := resetPostgres(ctx, opts.DSN); err != nil {
		return err
	}
	if err := os.Remove(opts.KeyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	st, err := store.Open(ctx, opts)
	if err != nil {
		return err
	}
	_, err = st.Migrate(ctx)
	st.Close()
	if err != nil {
		return err
	}
	key, err := readKey(opts.KeyFile)
	if err != nil {
		return err
	}
	h, err := apppass.NewHasher(key)
	if err != nil {
		return err
	}
	db, err := sql.Open(sqlDriver(cfg.driver), sqlDSN(cfg.driver, opts.DSN))
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = seed(ctx, db, cfg, h)
	return err
}

// measureAll measures a seeded store: logins and their writes, then the
// commands of each binary, then with -imap the IMAP LOGINs.
func measureAll(ctx context.Context, cfg config, opts store.Options, dir string, tw twin, col, base column) error {
	st, err := store.Open(ctx, opts)
	if err != nil {
		return err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close()
		return err
	}
	if err := measureLogins(ctx, st, cfg, col.rows); err != nil {
		st.Close()
		return err
	}
	if err := measureWrites(ctx, st, cfg, col.rows); err != nil {
		st.Close()
		return err
	}
	st.Close()

	if cfg.bin != "" && cfg.commands {
		bins, rows := []string{cfg.bin}, []map[string]string{col.rows}
		if cfg.baseline != "" {
			bins, rows = append(bins, cfg.baseline), append(rows, base.rows)
		}
		if err := measureCommands(ctx, cfg, bins, opts, dir, rows); err != nil {
			return err
		}
	}
	if cfg.imap {
		if err := measureIMAP(ctx, cfg, opts, tw.opts, dir, tw.dir, col.rows); err != nil {
			return fmt.Errorf("IMAP logins: %w", err)
		}
	}
	return nil
}

func sqlDriver(d string) string {
	if d == store.DriverPostgres {
		return "postgres"
	}
	return "sqlite"
}

func sqlDSN(d, dsn string) string {
	if d == store.DriverPostgres {
		return dsn
	}
	return "file:" + dsn + "?_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_time_format=sqlite"
}

func resetPostgres(ctx context.Context, dsn string) error {
	if dsn == "" {
		return errors.New("-dsn is required with -driver postgres")
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	return err
}

func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return hex.DecodeString(strings.TrimSpace(string(b)))
}

func userName(i int) string { return fmt.Sprintf("user%07d", i) }

// secret is app password j of user i: 16 lowercase letters, known to the
// measurement.
func secret(i, j int) string {
	v := uint64(i)*64 + uint64(j) + 1
	b := []byte("aaaaaaaaaaaaaaaa")
	for k := 15; k >= 0 && v > 0; k-- {
		b[k] = byte('a' + v%26)
		v /= 26
	}
	return string(b)
}

func appCount(i int) int {
	if i%100 == 0 {
		return 40
	}
	return 3
}

// seed writes the users and their app passwords: COPY on PostgreSQL, one
// transaction of prepared INSERTs on SQLite.
func seed(ctx context.Context, db *sql.DB, cfg config, h *apppass.Hasher) (int, error) {
	now := time.Now().UTC().Truncate(time.Microsecond)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	userQ := `INSERT INTO users (name_key, name, mfa, created_at, updated_at) VALUES (?, ?, ?, ?, ?)`
	appQ := `INSERT INTO app_passwords (user_key, user_name, label, label_key, scopes, hash, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`
	if cfg.driver == store.DriverPostgres {
		userQ = pq.CopyIn("users", "name_key", "name", "mfa", "created_at", "updated_at")
	}
	us, err := tx.PrepareContext(ctx, userQ)
	if err != nil {
		return 0, err
	}
	for i := range cfg.users {
		n := userName(i)
		if _, err := us.ExecContext(ctx, n, n, "enforced", now, now); err != nil {
			return 0, err
		}
	}
	if cfg.driver == store.DriverPostgres {
		if _, err := us.ExecContext(ctx); err != nil {
			return 0, err
		}
		appQ = pq.CopyIn("app_passwords", "user_key", "user_name", "label", "label_key", "scopes", "hash", "created_at")
	}
	us.Close()
	as, err := tx.PrepareContext(ctx, appQ)
	if err != nil {
		return 0, err
	}
	apps := 0
	for i := range cfg.users {
		n := userName(i)
		for j := range appCount(i) {
			label := fmt.Sprintf("app%02d", j)
			if _, err := as.ExecContext(ctx, n, n, label, label, "imap,smtp,ldap", h.Hash(n, secret(i, j)), now); err != nil {
				return 0, err
			}
			apps++
		}
	}
	if cfg.driver == store.DriverPostgres {
		if _, err := as.ExecContext(ctx); err != nil {
			return 0, err
		}
	}
	as.Close()
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	if cfg.driver == store.DriverPostgres {
		_, err = db.ExecContext(ctx, `ANALYZE`)
	}
	return apps, err
}

// event is one seeded login event: 9 in 10 succeed with an app password.
type event struct {
	at     time.Time
	user   string
	addr   string
	port   int
	ok     bool
	appID  int64
	label  string
	reason string
}

func makeEvent(r *rand.Rand, cfg config, now time.Time, k, total int) event {
	i := r.IntN(cfg.users)
	// In time order, as logins arrive: the heap then follows the time
	// index, as it does in a running store.
	span := int64(30 * 24 * time.Hour)
	ev := event{at: now.Add(-time.Duration(span - span/int64(total)*int64(k))), user: userName(i),
		addr: fmt.Sprintf("198.51.%d.%d", r.IntN(256), r.IntN(256)), port: 1024 + r.IntN(60000)}
	if k%10 != 0 {
		ev.ok, ev.appID, ev.label, ev.reason = true, int64(i*3+1), "app00", "app password matched"
	} else {
		ev.reason = "no app password matched and MFA is enforced: primary password refused without contacting the upstream"
	}
	return ev
}

// seedEvents writes cfg.events login events per user, in the form policy
// records them (structured, schema version 5).
func seedEvents(ctx context.Context, db *sql.DB, cfg config) (int, error) {
	now := time.Now().UTC()
	if cfg.driver == store.DriverPostgres {
		// A fresh store has one partition for the logins before its
		// migration day: replace it by the 30 days' partitions that a
		// store running for a month would have.
		var upto string
		if err := db.QueryRowContext(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'audit_logins'::regclass AND c.relname LIKE 'audit_logins_upto_%'`).Scan(&upto); err != nil {
			return 0, err
		}
		if _, err := db.ExecContext(ctx, `DROP TABLE `+upto); err != nil {
			return 0, err
		}
		today := now.Truncate(24 * time.Hour)
		for d := 1; d <= 31; d++ {
			day := today.AddDate(0, 0, -d)
			q := fmt.Sprintf(`CREATE TABLE audit_logins_%s PARTITION OF audit_logins FOR VALUES FROM ('%s') TO ('%s')`,
				day.Format("20060102"), day.Format(time.RFC3339), day.AddDate(0, 0, 1).Format(time.RFC3339))
			if _, err := db.ExecContext(ctx, q); err != nil {
				return 0, err
			}
		}
	}
	total := cfg.users * cfg.events
	r := rand.New(rand.NewPCG(1, 2))
	const chunk = 200000
	for done := 0; done < total; done += chunk {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return done, err
		}
		q := `INSERT INTO audit_events (time, is_login, actor, detail, action, subject, subject_key, outcome, protocol, client_addr, client_port, tls, credential, app_password_id, label, reason)
			VALUES (?, 1, '', '', 'login', ?, ?, ?, 'imap', ?, ?, 1, ?, ?, ?, ?)`
		if cfg.driver == store.DriverPostgres {
			q = pq.CopyIn("audit_events", "time", "is_login", "action", "subject", "subject_key", "outcome", "protocol", "client_addr", "client_port", "tls", "credential", "app_password_id", "label", "reason")
		}
		stmt, err := tx.PrepareContext(ctx, q)
		if err != nil {
			tx.Rollback()
			return done, err
		}
		for k := done; k < min(done+chunk, total); k++ {
			ev := makeEvent(r, cfg, now, k, total)
			outcome, cred := "failure", "none"
			var appID any
			if ev.ok {
				outcome, cred, appID = "success", "app-password", ev.appID
			}
			var err error
			if cfg.driver == store.DriverPostgres {
				_, err = stmt.ExecContext(ctx, ev.at, true, "login", ev.user, ev.user, outcome, "imap", ev.addr, ev.port, true, cred, appID, ev.label, ev.reason)
			} else {
				_, err = stmt.ExecContext(ctx, ev.at.Format("2006-01-02 15:04:05.999999-07:00"), ev.user, ev.user, outcome, ev.addr, ev.port, cred, appID, ev.label, ev.reason)
			}
			if err != nil {
				tx.Rollback()
				return done, err
			}
		}
		if cfg.driver == store.DriverPostgres {
			if _, err := stmt.ExecContext(ctx); err != nil {
				tx.Rollback()
				return done, err
			}
		}
		stmt.Close()
		if err := tx.Commit(); err != nil {
			return done, err
		}
	}
	if cfg.driver == store.DriverPostgres {
		if _, err := db.ExecContext(ctx, `ANALYZE audit_events`); err != nil {
			return total, err
		}
	}
	return total, nil
}

// bytesPerEvent measures the disk (heap and indexes) per login event of
// the current schema and of schema version 1, for which a sample of the
// same events goes into a table of version 1's shape with its indexes.
func bytesPerEvent(ctx context.Context, db *sql.DB, cfg config, n int) (v1, v5 string, err error) {
	sample := min(n, 200000)
	old := `CREATE TABLE audit_v1_sample (
		id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, time TIMESTAMPTZ NOT NULL, actor TEXT NOT NULL,
		action TEXT NOT NULL, subject TEXT NOT NULL, subject_key TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
		CREATE INDEX audit_v1_sample_time ON audit_v1_sample (time, id);
		CREATE INDEX audit_v1_sample_subject ON audit_v1_sample (subject_key, time, id)`
	if cfg.driver == store.DriverSQLite {
		old = strings.NewReplacer("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT", "TIMESTAMPTZ", "TIMESTAMP").Replace(old)
	}
	for _, q := range strings.Split(old, ";") {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return "", "", err
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", "", err
	}
	q := `INSERT INTO audit_v1_sample (time, actor, action, subject, subject_key, outcome, detail) VALUES (?, ?, 'login', ?, ?, ?, ?)`
	if cfg.driver == store.DriverPostgres {
		q = pq.CopyIn("audit_v1_sample", "time", "actor", "action", "subject", "subject_key", "outcome", "detail")
	}
	stmt, err := tx.PrepareContext(ctx, q)
	if err != nil {
		tx.Rollback()
		return "", "", err
	}
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC()
	for k := range sample {
		ev := makeEvent(r, cfg, now, k, sample)
		actor := "imap:" + netip.AddrPortFrom(netip.MustParseAddr(ev.addr), uint16(ev.port)).String()
		outcome, detail := "failure", "credential=none tls=yes reason="+ev.reason
		if ev.ok {
			outcome, detail = "success", fmt.Sprintf("credential=app-password:%d (%s) tls=yes reason=%s", ev.appID, ev.label, ev.reason)
		}
		if cfg.driver == store.DriverPostgres {
			_, err = stmt.ExecContext(ctx, ev.at, actor, "login", ev.user, ev.user, outcome, detail)
		} else {
			_, err = stmt.ExecContext(ctx, ev.at.Format("2006-01-02 15:04:05.999999-07:00"), actor, ev.user, ev.user, outcome, detail)
		}
		if err != nil {
			tx.Rollback()
			return "", "", err
		}
	}
	if cfg.driver == store.DriverPostgres {
		if _, err := stmt.ExecContext(ctx); err != nil {
			tx.Rollback()
			return "", "", err
		}
	}
	stmt.Close()
	if err := tx.Commit(); err != nil {
		return "", "", err
	}
	var oldBytes, newBytes float64
	if cfg.driver == store.DriverPostgres {
		if _, err := db.ExecContext(ctx, `VACUUM ANALYZE audit_v1_sample`); err != nil {
			return "", "", err
		}
		if err := db.QueryRowContext(ctx, `SELECT pg_total_relation_size('audit_v1_sample')`).Scan(&oldBytes); err != nil {
			return "", "", err
		}
		if err := db.QueryRowContext(ctx, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'audit_logins'::regclass`).Scan(&newBytes); err != nil {
			return "", "", err
		}
	} else {
		size := func(names ...string) (float64, error) {
			var v sql.NullFloat64
			q := `SELECT sum(pgsize) FROM dbstat WHERE name IN ('` + strings.Join(names, "','") + `')`
			err := db.QueryRowContext(ctx, q).Scan(&v)
			return v.Float64, err
		}
		if oldBytes, err = size("audit_v1_sample", "audit_v1_sample_time", "audit_v1_sample_subject"); err != nil {
			return "", "", err
		}
		if newBytes, err = size("audit_events", "audit_events_time", "audit_events_subject_time"); err != nil {
			return "", "", err
		}
	}
	if _, err := db.ExecContext(ctx, `DROP TABLE audit_v1_sample`); err != nil {
		return "", "", err
	}
	return fmt.Sprintf("%.0f (sample of %d)", oldBytes/float64(sample), sample), fmt.Sprintf("%.0f", newBytes/float64(n)), nil
}

// measureLogins runs logins of three kinds through the policy engine over
// the store's Journal, as serve does (no failure delay, no network).
func measureLogins(ctx context.Context, st *store.Store, cfg config, rows map[string]string) error {
	j := store.NewJournal(st, nil)
	defer j.Flush(ctx)
	e := policy.New(policy.Options{Store: j, FailureDelay: -1})
	r := rand.New(rand.NewPCG(3, 4))
	kinds := []struct {
		row  string
		make func() (string, string)
		want policy.Result
	}{
		{"login good app password p50/p99", func() (string, string) {
			i := r.IntN(cfg.users)
			return userName(i), secret(i, r.IntN(3))
		}, policy.Accepted},
		{"login wrong secret p50/p99", func() (string, string) {
			return userName(r.IntN(cfg.users)), "zzzzzzzzzzzzzzzz"
		}, policy.NotAsked},
		{"login unknown user p50/p99", func() (string, string) {
			return fmt.Sprintf("nobody%07d", r.IntN(cfg.users)), "zzzzzzzzzzzzzzzz"
		}, policy.NotAsked},
	}
	client := netip.MustParseAddrPort("203.0.113.9:50000")
	for _, k := range kinds {
		took := make([]time.Duration, 0, cfg.logins)
		for range cfg.logins {
			user, sec := k.make()
			start := time.Now()
			l, err := e.Decide(ctx, policy.Attempt{Proto: policy.IMAP, User: user, Secret: policy.Secret(sec), Client: client, TLS: true})
			if err != nil {
				return fmt.Errorf("login %s: %w", user, err)
			}
			res := k.want
			if !l.Allowed() {
				res = policy.NotAsked
			} else if k.want == policy.NotAsked {
				res = policy.Refused
			}
			l.Finish(ctx, res)
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		rows[k.row] = fmt.Sprintf("%s / %s", ms(took[len(took)/2]), ms(took[len(took)*99/100]))
	}
	return nil
}

// measureWrites measures what a successful app-password login writes —
// its last use (an UPDATE of the app password) and its audit event (an
// INSERT) — committed one transaction per login (Store.RecordLogin), and
// through the Journal that serve uses: up to 256 logins to a transaction,
// their events in one multi-row INSERT.
func measureWrites(ctx context.Context, st *store.Store, cfg config, rows map[string]string) error {
	r := rand.New(rand.NewPCG(5, 6))
	login := func() (int64, store.Usage, store.AuditEvent) {
		i := r.IntN(cfg.users)
		// app00 of user i: seeded in order, ids from 1, 40 for each user
		// whose number is a multiple of 100 and 3 for the others.
		id := int64(1 + 3*i + 37*((i+99)/100))
		now := time.Now()
		ev := store.AuditEvent{Time: now, Action: store.ActionLogin, Subject: userName(i), Outcome: "success",
			Protocol: "imap", ClientAddr: "203.0.113.9", ClientPort: 50000, TLS: true,
			Credential: store.CredentialAppPassword, AppPasswordID: id, Label: "app00", Reason: "app password matched"}
		return id, store.Usage{At: now, Addr: "203.0.113.9:50000", Proto: "imap"}, ev
	}
	took := make([]time.Duration, 0, cfg.logins)
	for range cfg.logins {
		id, u, ev := login()
		start := time.Now()
		if err := st.RecordLogin(ctx, id, u, ev); err != nil {
			return fmt.Errorf("record a login: %w", err)
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	rows["login write, a transaction each p50"] = ms(took[len(took)/2])

	j := store.NewJournal(st, nil)
	const n = 20000
	start := time.Now()
	for range n {
		id, u, ev := login()
		if err := j.RecordLogin(ctx, id, u, ev); err != nil {
			return fmt.Errorf("queue a login: %w", err)
		}
	}
	if err := j.Flush(ctx); err != nil {
		return err
	}
	d := time.Since(start)
	if lost := j.Lost(); lost > 0 {
		return fmt.Errorf("the journal lost %d of %d writes", lost, n)
	}
	rows["login write, journal (group commit)"] = fmt.Sprintf("%.0f µs per login (%d in %s, %.0f/s)",
		float64(d.Microseconds())/n, n, round(d), n/d.Seconds())
	return nil
}

// measureCommands times the passgate binaries on the seeded store, into
// rows[i] for bins[i]. The single commands take turns, binary by binary,
// so that each binary's runs see the same load.
func measureCommands(ctx context.Context, cfg config, bins []string, opts store.Options, dir string, rows []map[string]string) error {
	imapPort, metricsPort := freePort(), freePort()
	conf := filepath.Join(dir, "passgate.yaml")
	y := fmt.Sprintf(`store:
  driver: %s
  dsn: %q
key_file: %q
imap:
  listen: 127.0.0.1:%d
  upstream:
    addresses: [127.0.0.1:1]
    tls: none
    login: passthrough
    forward_client: none
policy:
  trusted_networks: [127.0.0.0/8]
metrics:
  listen: 127.0.0.1:%d
log:
  level: error
`, cfg.driver, opts.DSN, opts.KeyFile, imapPort, metricsPort)
	if err := os.WriteFile(conf, []byte(y), 0o600); err != nil {
		return err
	}
	env := append(os.Environ(), "PASSGATE_CONFIG="+conf)

	// serve: start to the first 200 of /readyz.
	serve := func(bin string) (time.Duration, error) {
		stop, took, err := startServe(ctx, bin, env, dir, metricsPort, 60*time.Second)
		if err == nil {
			stop()
		}
		return took, err
	}
	whole := func(args ...string) func(string) (time.Duration, error) {
		return func(bin string) (time.Duration, error) {
			start := time.Now()
			c := exec.CommandContext(ctx, bin, args...)
			c.Env, c.Dir = env, dir
			if out, err := c.CombinedOutput(); err != nil {
				return 0, errors.New(strings.SplitN(string(out), "\n", 2)[0])
			}
			return time.Since(start), nil
		}
	}
	for _, c := range []struct {
		row string
		f   func(string) (time.Duration, error)
	}{
		{"serve start → /readyz", serve},
		{"app-password list (one user)", whole("app-password", "list", userName(cfg.users/2))},
		{"audit --limit 100", whole("audit", "--limit", "100")},
		{"audit --user (one user's events)", whole("audit", "--user", userName(cfg.users/2))},
		{"user list --json: first byte", firstByte(ctx, env, dir, "user", "list", "--json")},
		{"audit --json: first byte", firstByte(ctx, env, dir, "audit", "--json")},
	} {
		for i, v := range repeat(bins, c.f) {
			rows[i][c.row] = v
		}
	}
	for i, bin := range bins {
		// user list --json writes "[", then one user per line, then "]".
		rows[i]["user list --json: whole"], rows[i]["user list --json: peak RSS"] = stream(ctx, bin, env, dir, 2, "user", "list", "--json")
	}
	for i, bin := range bins {
		rows[i]["audit --jsonl: whole"], rows[i]["audit --jsonl: peak RSS"] = stream(ctx, bin, env, dir, 0, "audit", "--jsonl")
	}
	return nil
}

// streamTimeout bounds one whole listing: 10 million rows at the goal's
// 50 000 rows/s take 200 s.
const streamTimeout = 20 * time.Minute

// stream runs a listing to its end, counting its lines (less the extra
// lines that are not rows), and returns the rows per second and the
// process's peak resident set size, as the kernel counted it.
func stream(ctx context.Context, bin string, env []string, dir string, extra int, args ...string) (rate, rss string) {
	ctx, cancel := context.WithTimeout(ctx, streamTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, bin, args...)
	c.Env, c.Dir = env, dir
	out, err := c.StdoutPipe()
	if err != nil {
		return "error: " + err.Error(), "-"
	}
	start := time.Now()
	if err := c.Start(); err != nil {
		return "error: " + err.Error(), "-"
	}
	lines := 0
	buf := make([]byte, 256<<10)
	for {
		n, err := out.Read(buf)
		lines += bytes.Count(buf[:n], []byte{'\n'})
		if err != nil {
			break
		}
	}
	werr := c.Wait()
	took := time.Since(start)
	if werr != nil {
		return fmt.Sprintf("error after %d lines in %s: %v", lines, round(took), werr), "-"
	}
	rows := lines - extra
	rate = fmt.Sprintf("%d rows in %s (%.0f rows/s)", rows, round(took), float64(rows)/took.Seconds())
	if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
		// Linux counts ru_maxrss in KiB.
		rss = fmt.Sprintf("%.1f MiB", float64(ru.Maxrss)/1024)
	}
	rate += fmt.Sprintf(", passgate CPU %s", round(c.ProcessState.UserTime()+c.ProcessState.SystemTime()))
	return rate, rss
}

// firstByte times a command from its start to its first byte of output,
// then stops it.
func firstByte(ctx context.Context, env []string, dir string, args ...string) func(string) (time.Duration, error) {
	return func(bin string) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, bin, args...)
		c.Env, c.Dir = env, dir
		out, err := c.StdoutPipe()
		if err != nil {
			return 0, err
		}
		start := time.Now()
		if err := c.Start(); err != nil {
			return 0, err
		}
		br := bufio.NewReader(out)
		_, rerr := br.ReadByte()
		took := time.Since(start)
		c.Process.Kill()
		c.Wait()
		if rerr != nil {
			return 0, errors.New("no output in 60 s")
		}
		return took, nil
	}
}

// runs is how many times repeat runs a timed command.
const runs = 7

// repeat runs f with each binary several times, the binaries taking
// turns (in a rotating order), and gives for each the fastest and the
// median run: on a machine shared with other work, the fastest is the
// nearest to the command's own cost, the median what a user would see
// then.
func repeat(bins []string, f func(string) (time.Duration, error)) []string {
	took := make([][]time.Duration, len(bins))
	out := make([]string, len(bins))
	for r := range runs {
		for n := range bins {
			i := (r + n) % len(bins)
			if out[i] != "" {
				continue // failed already
			}
			d, err := f(bins[i])
			if err != nil {
				out[i] = "error: " + err.Error()
				continue
			}
			took[i] = append(took[i], d)
		}
	}
	for i, t := range took {
		if out[i] != "" {
			continue
		}
		slices.Sort(t)
		out[i] = fmt.Sprintf("%s (median %s)", ms(t[0]), ms(t[len(t)/2]))
	}
	return out
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func round(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }

// startServe starts "passgate serve" (bin, with env, in dir) and returns
// once /readyz on metricsPort says 200, with how long that took from the
// start, and a stop that interrupts it and waits for it to end; after
// limit it stops the process and fails.
func startServe(ctx context.Context, bin string, env []string, dir string, metricsPort int, limit time.Duration) (stop func(), took time.Duration, err error) {
	start := time.Now()
	srv := exec.CommandContext(ctx, bin, "serve")
	srv.Env, srv.Dir = env, dir
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return nil, 0, err
	}
	stop = func() {
		srv.Process.Signal(os.Interrupt)
		srv.Wait()
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", metricsPort)
	for deadline := start.Add(limit); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, time.Since(start), nil
			}
		}
	}
	stop()
	return nil, 0, fmt.Errorf("passgate serve: not ready in %v", limit)
}
