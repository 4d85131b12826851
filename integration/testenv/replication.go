package testenv

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// PGNode is one PostgreSQL server of a ReplicatedPostgres pair.
type PGNode struct {
	Name string // "primary" or "standby": its cluster_name
	Port int    // on 127.0.0.1
	Data string // data directory
	Log  string // the server's log file

	bin  string
	cred *syscall.Credential
	cmd  *exec.Cmd

	mu     sync.Mutex
	exited chan struct{} // closed when the server process is gone
}

// ReplicatedPostgres is a primary and a streaming-replication standby
// (pg_basebackup -R: standby.signal and primary_conninfo) on loopback, the
// standby synchronous (synchronous_standby_names names it, and
// synchronous_commit is on): a commit returns only once the standby has
// it.
type ReplicatedPostgres struct {
	Dir     string
	Primary *PGNode
	Standby *PGNode
}

// StartReplicatedPostgres initialises a primary, takes a base backup of it
// for the standby, starts both as the postgres user (when run as root) and
// waits until the standby streams synchronously. Stop the pair with Stop.
func StartReplicatedPostgres(ctx context.Context) (*ReplicatedPostgres, error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "passgate-pgrepl-")
	if err != nil {
		return nil, fmt.Errorf("testenv: replicated postgres: temporary directory: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testenv: replicated postgres: give %s to the postgres user: %w", dir, err)
		}
	}
	r := &ReplicatedPostgres{Dir: dir}
	fail := func(err error) (*ReplicatedPostgres, error) {
		r.Stop()
		return nil, err
	}
	node := func(name string) (*PGNode, error) {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		return &PGNode{Name: name, Port: port, Data: filepath.Join(dir, name), Log: filepath.Join(dir, name+".log"), bin: bin, cred: cred}, nil
	}
	if r.Primary, err = node("primary"); err != nil {
		return fail(err)
	}
	if r.Standby, err = node("standby"); err != nil {
		return fail(err)
	}
	if out, err := r.Primary.run(ctx, "initdb", "-D", r.Primary.Data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return fail(fmt.Errorf("testenv: replicated postgres: initdb: %w\n%s", err, out))
	}
	// The primary waits for the standby's flush before a commit returns.
	if err := r.Primary.Start(ctx, "-c", "synchronous_standby_names=standby", "-c", "synchronous_commit=on"); err != nil {
		return fail(err)
	}
	if out, err := r.Standby.run(ctx, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Primary.Port), "-U", "postgres",
		"-D", r.Standby.Data, "-R", "-X", "stream", "--no-sync"); err != nil {
		return fail(fmt.Errorf("testenv: replicated postgres: pg_basebackup: %w\n%s", err, out))
	}
	// The walreceiver's application_name defaults to cluster_name, which
	// synchronous_standby_names lists.
	if err := r.Standby.Start(ctx); err != nil {
		return fail(err)
	}
	db, err := sql.Open("postgres", r.Primary.DSN("postgres"))
	if err != nil {
		return fail(err)
	}
	defer db.Close()
	deadline := time.Now().Add(postgresStartTimeout)
	for {
		var state string
		err := db.QueryRowContext(ctx, `SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'`).Scan(&state)
		if err == nil && state == "sync" {
			return r, nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(r.Standby.Log)
			return fail(fmt.Errorf("testenv: replicated postgres: the standby does not stream synchronously after %s (state %q, %v):\n%s", postgresStartTimeout, state, err, log))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DSN is a key=value DSN naming both servers, the standby first, that
// lets lib/pq keep only the one that accepts writes.
func (r *ReplicatedPostgres) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=%s sslmode=disable target_session_attrs=read-write connect_timeout=2",
		r.Standby.Port, r.Primary.Port, db)
}

// Stop stops both servers (immediately: the data is thrown away) and
// removes the directory.
func (r *ReplicatedPostgres) Stop() {
	for _, n := range []*PGNode{r.Standby, r.Primary} {
		if n != nil {
			n.kill()
		}
	}
	os.RemoveAll(r.Dir)
}

// DSN is a URL of this server alone, for the database db.
func (n *PGNode) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", n.Port, db)
}

// run runs one of PostgreSQL's programs as the server's user.
func (n *PGNode) run(ctx context.Context, prog string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(n.bin, prog), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: n.cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = filepath.Dir(n.Data)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd.CombinedOutput()
}

// Start runs the server (more settings in args, as -c name=value) and
// waits until it accepts connections.
func (n *PGNode) Start(ctx context.Context, args ...string) error {
	logFile, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: postgres %s: log file: %w", n.Name, err)
	}
	args = append([]string{"-D", n.Data, "-k", filepath.Dir(n.Data), "-h", "127.0.0.1", "-p", strconv.Itoa(n.Port),
		"-c", "cluster_name=" + n.Name, "-c", "fsync=off", "-c", "max_connections=100", "-c", "shared_buffers=16MB"}, args...)
	cmd := exec.Command(filepath.Join(n.bin, "postgres"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: n.cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = filepath.Dir(n.Data)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("testenv: postgres %s: start: %w", n.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	deadline := time.Now().Add(postgresStartTimeout)
	for {
		err := ping(ctx, n.DSN("postgres"))
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(n.Log)
			return fmt.Errorf("testenv: postgres %s exited before accepting connections:\n%s", n.Name, log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(n.Log)
			return fmt.Errorf("testenv: postgres %s did not accept connections within %s (%w):\n%s", n.Name, postgresStartTimeout, err, log)
		}
	}
}

// StopImmediate stops the server with pg_ctl stop -m immediate (a crash:
// no checkpoint, clients cut off) and waits until it is gone.
func (n *PGNode) StopImmediate(ctx context.Context) error {
	if out, err := n.run(ctx, "pg_ctl", "stop", "-D", n.Data, "-m", "immediate", "-w"); err != nil {
		return fmt.Errorf("testenv: postgres %s: pg_ctl stop -m immediate: %w\n%s", n.Name, err, out)
	}
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Promote turns a standby into a primary with pg_ctl promote and waits
// until it has left recovery.
func (n *PGNode) Promote(ctx context.Context) error {
	if out, err := n.run(ctx, "pg_ctl", "promote", "-D", n.Data, "-w"); err != nil {
		return fmt.Errorf("testenv: postgres %s: pg_ctl promote: %w\n%s", n.Name, err, out)
	}
	return nil
}

// kill stops the server at once if it runs, and waits for it.
func (n *PGNode) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}
