package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/passgate/passgate/backends/store"
)

// cmdMigrate runs "passgate migrate": it creates or updates the schema of
// the store and creates the server key of a new store.
func cmdMigrate(ctx context.Context, e *env, args []string) int {
	f := newFlags("migrate", "[--config FILE] [--reset-key [--yes]]",
		"Create or update the store's schema (serve does it too at start) and create the server key file of a new store.\n"+
			"--reset-key is the way out when the key file of an existing store is lost for good: it deletes EVERY app\n"+
			"password, moves the old key file aside and creates a new key; users must create new app passwords. It asks\n"+
			"for confirmation on a terminal; elsewhere (a script) it needs --yes.")
	config := f.configFlag()
	resetKey := f.Bool("reset-key", false, "delete every app password and start over with a new server key")
	yes := f.Bool("yes", false, "with --reset-key: do not ask for confirmation")
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	if *yes && !*resetKey {
		return e.usageError(f.path, "--yes confirms --reset-key and means nothing without it")
	}
	cfg, file, err := e.loadConfig(*config)
	if err != nil {
		return e.fail(f.path, configProblem(file, err))
	}
	st, err := store.Open(ctx, storeOptions(cfg))
	if err != nil {
		return e.fail(f.path, err)
	}
	defer st.Close()
	if *resetKey {
		if !*yes {
			if code, ok := e.confirmResetKey(f.path, cfg.KeyFile); !ok {
				return code
			}
		}
		n, err := st.ResetKey(ctx)
		if err != nil {
			return e.fail(f.path, err)
		}
		fmt.Fprintf(e.Stdout, "New server key in %s; %d app passwords deleted: users must create new ones.\n", cfg.KeyFile, n)
		return e.done(ctx, st, f.path, "store.reset-key", "", fmt.Sprintf("deleted=%d", n), nil)
	}
	applied, err := st.Migrate(ctx)
	where := cfg.Store.Driver + " store"
	if cfg.Store.Driver == store.DriverSQLite {
		where += " " + cfg.Store.DSN
	}
	if err != nil {
		// A failed migration may leave no table to audit into; say so
		// on stderr only.
		return e.fail(f.path, err)
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.Stdout, "The %s is up to date.\n", where)
		return exitOK
	}
	for _, v := range applied {
		fmt.Fprintf(e.Stdout, "Applied migration %s to the %s.\n", v, where)
	}
	return e.done(ctx, st, f.path, "store.migrate", "", "applied="+strings.Join(applied, ","), nil)
}

// confirmResetKey asks the person at the terminal to type "reset" before
// every app password is deleted. Without a terminal it refuses: a script
// must say --yes.
func (e *env) confirmResetKey(path, keyFile string) (int, bool) {
	if e.Interactive == nil || !e.Interactive() || e.Stdin == nil {
		return e.usageError(path, "--reset-key deletes every app password and there is no terminal to confirm on: add --yes to confirm"), false
	}
	fmt.Fprintf(e.Stderr, "passgate: %s: --reset-key deletes EVERY app password of every user and replaces the server key %s;\n"+
		"users must create new app passwords. Type \"reset\" to go on: ", path, keyFile)
	answer, err := bufio.NewReader(e.Stdin).ReadString('\n')
	if strings.TrimSpace(answer) != "reset" {
		if err != nil && answer == "" {
			err = fmt.Errorf("no answer (%w)", err)
		} else {
			err = errors.New("not confirmed")
		}
		return e.fail(path, fmt.Errorf("%w: nothing was changed", err)), false
	}
	return exitOK, true
}
