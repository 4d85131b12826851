package cli

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/policy/account"
)

// adminOps are the account operations (policy/account) as the command
// line runs them: the same rules, messages and audit events as the admin
// pages and the JSON API, with the operating-system user as actor.
type adminOps struct {
	*account.Admin
	lost error // an audit event that could not be written
}

// cliActor is the operating-system user who ran the command: SUDO_USER
// when set (the admin behind sudo), else USER.
func (e *env) cliActor() account.Actor {
	for _, k := range []string{"SUDO_USER", "USER"} {
		if u := e.Getenv(k); u != "" {
			return account.Actor{Kind: "cli", User: u}
		}
	}
	return account.Actor{Kind: "cli"}
}

// newAdminOps returns the account operations on st with cfg's rules.
func newAdminOps(st *store.Store, cfg *configs.Config, now func() time.Time) *adminOps {
	ops := &adminOps{}
	ops.Admin = account.NewAdmin(account.AdminOptions{
		Store:          st,
		Now:            now,
		CheckName:      func(name string) error { return loginNameProblem(cfg, name) },
		KnownUsersOnly: cfg.Policy.DefaultMFA == string(store.MFADisabled),
		AuditError:     func(err error) { ops.lost = errors.Join(ops.lost, err) },
	})
	return ops
}

// accountAdmin returns the account operations of the server, which close
// the live sessions of a deleted app password with closeLive.
func accountAdmin(st *store.Store, cfg *configs.Config, closeLive func(id int64) int) *account.Admin {
	return account.NewAdmin(account.AdminOptions{
		Store:          st,
		CheckName:      func(name string) error { return loginNameProblem(cfg, name) },
		KnownUsersOnly: cfg.Policy.DefaultMFA == string(store.MFADisabled),
		CloseLive:      closeLive,
	})
}

// end ends a command that ran an account operation: its error, else a
// lost audit event, fails the command.
func (e *env) end(path string, ops *adminOps, err error) int {
	if err != nil {
		return e.fail(path, err)
	}
	if ops.lost != nil {
		fmt.Fprintf(e.Stderr, "passgate: %s: %v (the audit trail misses this success)\n", path, ops.lost)
		return exitFailure
	}
	return exitOK
}

// said ends a command like end, after printing format's message when err
// is nil.
func (e *env) said(path string, ops *adminOps, err error, format string, a ...any) int {
	if err == nil {
		fmt.Fprintf(e.Stdout, format, a...)
	}
	return e.end(path, ops, err)
}

func cmdUserSetAdmin(ctx context.Context, e *env, args []string) int {
	f := newFlags("user set-admin", "NAME true|false [--config FILE]",
		"Mark a user as administrator (true) or not (false). An administrator opens the admin pages of the portal\n"+
			"(/admin) after signing in with a second factor, which must be registered.")
	var admin bool
	check := func(pos []string) error {
		var err error
		if admin, err = strconv.ParseBool(pos[1]); err != nil || (pos[1] != "true" && pos[1] != "false") {
			return fmt.Errorf("%q: use true or false", pos[1])
		}
		return nil
	}
	return e.onStore(ctx, f, args, 2, check, func(_ *store.Store, ops *adminOps, pos []string) int {
		err := ops.SetAdmin(ctx, e.cliActor(), pos[0], admin)
		if admin {
			return e.said(f.path, ops, err, "%s is now an administrator; the admin pages open once a second factor is registered.\n", clean(pos[0]))
		}
		return e.said(f.path, ops, err, "%s is no longer an administrator.\n", clean(pos[0]))
	})
}

// cmdAdminToken runs "passgate admin-token SUBCOMMAND".
func cmdAdminToken(ctx context.Context, e *env, args []string) int {
	return e.group(ctx, "admin-token", "Manage the tokens of the JSON API (/api/v1): shown once, only a keyed hash is kept.", []command{
		{"create", "create a token and print it once", cmdAdminTokenCreate},
		{"list", "list the tokens (never the tokens themselves)", cmdAdminTokenList},
		{"revoke", "delete a token", cmdAdminTokenRevoke},
	}, args)
}

// expiryFlag reads an --expires flag: nil for never, else the time a
// positive DURATION from now.
func (e *env) expiryFlag(expires string) (*time.Time, error) {
	if expires == "" {
		return nil, nil
	}
	d, err := parseDuration(expires)
	if err != nil || d <= 0 {
		if err == nil {
			err = fmt.Errorf("%q must be positive", expires)
		}
		return nil, errors.New("--expires: " + err.Error())
	}
	t := e.Now().Add(d)
	return &t, nil
}

func cmdAdminTokenCreate(ctx context.Context, e *env, args []string) int {
	f := newFlags("admin-token create", "NAME [--expires DURATION] [--read-only] [--config FILE]",
		"Create an admin token for the JSON API and print it once; send it as \"Authorization: Bearer TOKEN\".\n"+
			"A read-only token may only read (GET).")
	expires := f.String("expires", "", "expire after `DURATION`, e.g. 90d or 720h (default: never)")
	readOnly := f.Bool("read-only", false, "allow reading only")
	var expiresAt *time.Time
	check := func([]string) (err error) {
		expiresAt, err = e.expiryFlag(*expires)
		return err
	}
	return e.onStore(ctx, f, args, 1, check, func(_ *store.Store, ops *adminOps, pos []string) int {
		t, secret, err := ops.CreateToken(ctx, e.cliActor(), pos[0], *readOnly, expiresAt)
		what := "read and write"
		if t.ReadOnly {
			what = "read-only"
		}
		if t.ExpiresAt != nil {
			what += "; expires " + stamp(*t.ExpiresAt)
		}
		return e.said(f.path, ops, err, "Created admin token %s (%s). Copy it now; it will not be shown again:\n%s\n", clean(t.Name), what, secret)
	})
}

func cmdAdminTokenList(ctx context.Context, e *env, args []string) int {
	f := newFlags("admin-token list", "[--json] [--config FILE]", "List the admin tokens: name, access, creation, expiry and last use.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	return e.onStore(ctx, f, args, 0, nil, func(_ *store.Store, ops *adminOps, _ []string) int {
		ts, err := ops.Tokens(ctx)
		if err != nil {
			return e.fail(f.path, err)
		}
		if *asJSON {
			return e.wrote(f.path, writeJSON(e.Stdout, ts))
		}
		if len(ts) == 0 {
			fmt.Fprintln(e.Stdout, "No admin tokens. Create one with: passgate admin-token create NAME")
			return exitOK
		}
		rows := make([][]string, 0, len(ts))
		for _, t := range ts {
			access := "read-write"
			if t.ReadOnly {
				access = "read-only"
			}
			rows = append(rows, []string{clean(t.Name), access, stamp(t.CreatedAt), clean(t.CreatedBy), stampPtr(t.ExpiresAt), stampPtr(t.LastUsedAt)})
		}
		return e.wrote(f.path, table(e.Stdout, []string{"NAME", "ACCESS", "CREATED", "BY", "EXPIRES", "LAST USED"}, rows))
	})
}

func cmdAdminTokenRevoke(ctx context.Context, e *env, args []string) int {
	f := newFlags("admin-token revoke", "NAME [--config FILE]", "Delete admin token NAME: the next request with it is refused.")
	return e.onStore(ctx, f, args, 1, nil, func(_ *store.Store, ops *adminOps, pos []string) int {
		err := ops.RevokeToken(ctx, e.cliActor(), pos[0])
		return e.said(f.path, ops, err, "Revoked admin token %s.\n", clean(pos[0]))
	})
}
