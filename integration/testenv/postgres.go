package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/lib/pq" // PostgreSQL driver for CreateDatabase and the readiness check
)

// EnvPostgres names the environment variable that points the tests at a
// running PostgreSQL cluster instead of a throwaway one. Its value is a
// URL (postgres://USER@HOST:PORT/DB?sslmode=disable) of a superuser, which
// the tests use to create their own databases.
const EnvPostgres = "PASSGATE_TEST_POSTGRES"

// postgresStartTimeout bounds how long Postgres waits for a new cluster to
// accept connections.
const postgresStartTimeout = 60 * time.Second

// Postgres returns the URL of a PostgreSQL superuser connection for tests
// and a function that stops what Postgres started.
//
// With $PASSGATE_TEST_POSTGRES set, that cluster is used and stop does
// nothing. Otherwise Postgres runs Debian's initdb and postgres (found under
// /usr/lib/postgresql/*/bin) as the postgres user in a new temporary
// directory, listening only on 127.0.0.1 on a free port, with fsync off; stop
// shuts it down (fast shutdown) and removes the directory. The server gets
// SIGKILL if the test binary dies first. A missing installation is an error
// that says how to get one: tests must fail, never skip, without it.
func Postgres(ctx context.Context) (dsnBase string, stop func(), err error) {
	if dsn := os.Getenv(EnvPostgres); dsn != "" {
		if err := ping(ctx, dsn); err != nil {
			return "", nil, fmt.Errorf("testenv: $%s=%q does not answer: %w (unset it to let the tests start their own PostgreSQL)", EnvPostgres, redact(dsn), err)
		}
		return dsn, func() {}, nil
	}
	bin, err := postgresBinDir()
	if err != nil {
		return "", nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "passgate-pg-")
	if err != nil {
		return "", nil, fmt.Errorf("testenv: postgres: temporary directory: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("testenv: postgres: give %s to the postgres user: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	initdb.Dir = dir
	initdb.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("testenv: postgres: initdb: %w\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		cleanup()
		return "", nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("testenv: postgres: log file: %w", err)
	}
	srv := exec.Command(filepath.Join(bin, "postgres"),
		"-D", data, "-k", dir, "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB")
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	srv.Dir = dir
	srv.Stdout = logFile
	srv.Stderr = logFile
	srv.Env = append(os.Environ(), "LC_ALL=C")
	if err := srv.Start(); err != nil {
		logFile.Close()
		cleanup()
		return "", nil, fmt.Errorf("testenv: postgres: start %s: %w", srv.Path, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = srv.Wait()
		logFile.Close()
		close(exited)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = srv.Process.Signal(syscall.SIGINT) // fast shutdown
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				_ = srv.Process.Kill()
				<-exited
			}
			cleanup()
		})
	}

	dsnBase = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	deadline := time.Now().Add(postgresStartTimeout)
	for {
		err := ping(ctx, dsnBase)
		if err == nil {
			return dsnBase, stop, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			stop()
			return "", nil, fmt.Errorf("testenv: postgres exited before accepting connections:\n%s", log)
		case <-ctx.Done():
			stop()
			return "", nil, fmt.Errorf("testenv: postgres: waiting for start: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			stop()
			return "", nil, fmt.Errorf("testenv: postgres did not accept connections within %s (last error: %w):\n%s", postgresStartTimeout, err, log)
		}
	}
}

// dbNameRE is what CreateDatabase accepts as a database name, so that the
// name needs no quoting rules beyond double quotes.
var dbNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CreateDatabase drops the database name if it exists, creates it afresh on
// the cluster of dsnBase (as returned by Postgres) and returns a DSN for it.
// name must be lower-case letters, digits and underscores.
func CreateDatabase(ctx context.Context, dsnBase, name string) (dsn string, err error) {
	if !dbNameRE.MatchString(name) {
		return "", fmt.Errorf("testenv: create database %q: use lower-case letters, digits and _ (at most 63)", name)
	}
	dsn, err = withDatabase(dsnBase, name)
	if err != nil {
		return "", err
	}
	db, err := sql.Open("postgres", dsnBase)
	if err != nil {
		return "", fmt.Errorf("testenv: create database %s: %w", name, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
		return "", fmt.Errorf("testenv: drop database %s: %w", name, err)
	}
	if _, err := db.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return "", fmt.Errorf("testenv: create database %s: %w", name, err)
	}
	return dsn, nil
}

// withDatabase returns dsnBase with its database replaced by name. Both URL
// and key=value forms are understood.
func withDatabase(dsnBase, name string) (string, error) {
	if strings.HasPrefix(dsnBase, "postgres://") || strings.HasPrefix(dsnBase, "postgresql://") {
		u, err := url.Parse(dsnBase)
		if err != nil {
			return "", fmt.Errorf("testenv: PostgreSQL URL %q: %w", redact(dsnBase), err)
		}
		u.Path = "/" + name
		return u.String(), nil
	}
	// key=value form: a later dbname overrides an earlier one.
	return dsnBase + " dbname=" + name, nil
}

// postgresBinDir finds the directory of initdb and postgres, preferring the
// newest Debian version, then the PATH.
func postgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("testenv: postgresql is not installed (no initdb and postgres under /usr/lib/postgresql/*/bin or on the PATH): " +
		"run the README's test command, which installs it, or set $" + EnvPostgres + " to the URL of a running cluster")
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// postgresCredential returns the credential to run PostgreSQL under: the
// postgres user when the tests run as root (PostgreSQL refuses root), nil
// (the current user) otherwise.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("testenv: PostgreSQL refuses to run as root and there is no postgres user (%w): install the postgresql package, which creates it", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("testenv: postgres user has uid %q gid %q: not numeric", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testenv: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func ping(ctx context.Context, dsn string) error {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return db.PingContext(pctx)
}

// redact hides a password in a PostgreSQL URL for error messages.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
	}
	return dsn
}

// DropDatabase drops the database name from the cluster of dsnBase,
// closing its connections first. It is for test clean-up.
func DropDatabase(ctx context.Context, dsnBase, name string) error {
	if !dbNameRE.MatchString(name) {
		return fmt.Errorf("testenv: drop database %q: not a name CreateDatabase makes", name)
	}
	db, err := sql.Open("postgres", dsnBase)
	if err != nil {
		return fmt.Errorf("testenv: drop database %s: %w", name, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
		return fmt.Errorf("testenv: drop database %s: %w", name, err)
	}
	return nil
}
