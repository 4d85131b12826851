package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/configs"
)

// defaultConfigFile is read from the working directory when neither
// --config nor $PASSGATE_CONFIG names a file.
const defaultConfigFile = "passgate.yaml"

// loadConfig loads and validates the configuration: the file flagValue
// names, else $PASSGATE_CONFIG, else ./passgate.yaml if it exists, else the
// built-in defaults. It returns the path used ("" for the defaults).
// ${NAME} references in the file are expanded with e.Getenv (an empty
// variable counts as unset).
func (e *env) loadConfig(flagValue string) (*configs.Config, string, error) {
	path := flagValue
	if path == "" {
		path = e.Getenv("PASSGATE_CONFIG")
	}
	if path == "" {
		_, err := os.Stat(defaultConfigFile)
		switch {
		case err == nil:
			path = defaultConfigFile
		case !errors.Is(err, fs.ErrNotExist):
			return nil, "", fmt.Errorf("cli: look for ./%s: %w", defaultConfigFile, err)
		}
	}
	lookup := func(name string) (string, bool) {
		v := e.Getenv(name)
		return v, v != ""
	}
	cfg, err := configs.LoadWith(path, lookup)
	if err != nil {
		return nil, path, err
	}
	return cfg, path, nil
}

// configProblem formats a configuration error for the terminal: one
// problem per line under a heading that names the file and the command
// that lists them.
func configProblem(path string, err error) error {
	var multi interface{ Unwrap() []error }
	if !errors.As(err, &multi) {
		return err
	}
	var b strings.Builder
	name := path
	if name == "" {
		name = "built-in defaults"
	}
	probs := multi.Unwrap()
	fmt.Fprintf(&b, "configuration %s is not valid (%d problems; run 'passgate check-config --config %s'):", name, len(probs), name)
	for _, p := range probs {
		b.WriteString("\n  " + p.Error())
	}
	return errors.New(b.String())
}

// openStore opens the store the configuration names and brings its schema
// up to date (Open, then Migrate). The caller closes it.
func openStore(ctx context.Context, cfg *configs.Config) (*store.Store, error) {
	st, err := store.Open(ctx, storeOptions(cfg))
	if err != nil {
		return nil, err
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// storeOptions translates the configuration into the store's Options.
func storeOptions(cfg *configs.Config) store.Options {
	return store.Options{
		Driver:          cfg.Store.Driver,
		DSN:             cfg.Store.DSN,
		KeyFile:         cfg.KeyFile,
		MaxAppPasswords: cfg.Policy.MaxAppPasswords,
		DefaultMFA:      store.MFAState(cfg.Policy.DefaultMFA),
	}
}

// onStore is the opening every command on the store shares: it parses
// args (with --config) for exactly n positional arguments, lets check
// (which may be nil) refuse them before anything is opened (a usage
// error, unless it is a failure), opens the store the configuration names, and runs do on it
// with the account operations; the store is closed when do returns.
// do's result is the command's exit code.
func (e *env) onStore(ctx context.Context, f *cmdFlags, args []string, n int, check func(pos []string) error,
	do func(st *store.Store, ops *adminOps, pos []string) int) int {
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, n, n)
	if !ok {
		return code
	}
	if check != nil {
		var failed failure
		if err := check(pos); errors.As(err, &failed) {
			return e.fail(f.path, failed.error)
		} else if err != nil {
			return e.usageError(f.path, err.Error())
		}
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	return do(st, newAdminOps(st, cfg, e.Now), pos)
}

// failure is an error of onStore's check that is a runtime failure (exit
// 1), not a usage error.
type failure struct{ error }

// openWithConfig loads the configuration and opens the store for a
// command; on failure it has printed why and returns the exit code. With a
// configuration file, the store must exist already: an admin command run
// with the wrong file, or from the wrong directory, must not create an
// empty store beside it and report success (only migrate and serve create
// a store). With no file at all, the embedded default store in the working
// directory is created as before.
func (e *env) openWithConfig(ctx context.Context, path, configFlag string) (*store.Store, *configs.Config, int, bool) {
	cfg, file, err := e.loadConfig(configFlag)
	if err != nil {
		return nil, nil, e.fail(path, configProblem(file, err)), false
	}
	if file != "" {
		if err := existingStore(cfg, file); err != nil {
			return nil, nil, e.fail(path, err), false
		}
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, nil, e.fail(path, err), false
	}
	return st, cfg, exitOK, true
}

// existingStore checks that the SQLite file and the server key that the
// configuration file names exist, and names what it looked for when they
// do not.
func existingStore(cfg *configs.Config, file string) error {
	missing := func(what, key, p string) error {
		return fmt.Errorf("%s %s does not exist (%s in %s); this command does not create one: check the configuration file, or create the store with \"passgate migrate --config %s\"", what, p, key, file, file)
	}
	if cfg.Store.Driver == store.DriverSQLite {
		p := strings.TrimPrefix(cfg.Store.DSN, "file:")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return missing("store", "store.dsn", p)
		}
	}
	if _, err := os.Stat(cfg.KeyFile); errors.Is(err, fs.ErrNotExist) {
		return missing("server key file", "key_file", cfg.KeyFile)
	}
	return nil
}

// record writes an audit event for a change made by the command path.
// cause is nil for a success. The write outlives a cancelled ctx (a
// refused change is recorded even after Ctrl-C) but not by more than 5 s.
// It reports on stderr when the event cannot be written and returns false.
func (e *env) record(ctx context.Context, st *store.Store, path, action, subject, detail string, cause error) bool {
	ev := store.AuditEvent{
		Time:    e.Now(),
		Actor:   e.actor(),
		Action:  action,
		Subject: subject,
		Outcome: "success",
		Detail:  detail,
	}
	if cause != nil {
		ev.Outcome = "failure"
		reason := cause.Error()
		if len(reason) > 300 {
			reason = reason[:300] + "…"
		}
		if ev.Detail != "" {
			ev.Detail += " "
		}
		ev.Detail += "error=" + fmt.Sprintf("%q", reason)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := st.Record(rctx, ev); err != nil {
		fmt.Fprintf(e.Stderr, "passgate: %s: %v (the audit trail misses this %s)\n", path, err, ev.Outcome)
		return false
	}
	return true
}

// done finishes a change: it records the audit event and returns the exit
// code; a failed change prints cause.
func (e *env) done(ctx context.Context, st *store.Store, path, action, subject, detail string, cause error) int {
	recorded := e.record(ctx, st, path, action, subject, detail, cause)
	if cause != nil {
		return e.fail(path, cause)
	}
	if !recorded {
		return exitFailure
	}
	return exitOK
}
