package cli

import (
	"context"
	"fmt"
	"strconv"

	"github.com/passgate/passgate/backends/store"
)

// cmdUser runs "passgate user SUBCOMMAND".
func cmdUser(ctx context.Context, e *env, args []string) int {
	return e.group(ctx, "user", "Manage users and their MFA state (disabled, enabled, enforced).", []command{
		{"add", "add a user", cmdUserAdd},
		{"list", "list users", cmdUserList},
		{"set-mfa", "change a user's MFA state", cmdUserSetMFA},
		{"set-password", "set a user's primary password for the portal (web.verify: store), read from standard input", cmdUserSetPassword},
		{"delete", "delete a user and all the user's app passwords", cmdUserDelete},
	}, args)
}

func cmdUserAdd(ctx context.Context, e *env, args []string) int {
	f := newFlags("user add", "NAME [--mfa disabled|enabled|enforced] [--config FILE]",
		"Add a user, named by the login name the mail server knows (e.g. alice or alice@example.test).\n"+
			"With --mfa enforced the primary password no longer opens IMAP, SMTP and LDAP; only app passwords do.")
	mfa := f.String("mfa", "", "MFA `STATE`: disabled, enabled or enforced (default: policy.default_mfa)")
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 1, 1)
	if !ok {
		return code
	}
	var state store.MFAState
	if *mfa != "" {
		st, err := store.ParseMFAState(*mfa)
		if err != nil {
			return e.usageError(f.path, "--mfa: "+err.Error())
		}
		state = st
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	if err := loginNameProblem(cfg, pos[0]); err != nil {
		return e.done(ctx, st, f.path, "user.add", pos[0], "", err)
	}
	u, err := st.AddUser(ctx, pos[0], state)
	detail := ""
	if err == nil {
		detail = "mfa=" + string(u.MFA)
		fmt.Fprintf(e.Stdout, "Added user %s (MFA %s).\n", clean(u.Name), u.MFA)
	} else if state != "" {
		detail = "mfa=" + string(state)
	}
	return e.done(ctx, st, f.path, "user.add", pos[0], detail, err)
}

// userRow is a user as "user list --json" prints it.
type userRow struct {
	store.User
	AppPasswords int `json:"app_passwords"`
}

func cmdUserList(ctx context.Context, e *env, args []string) int {
	f := newFlags("user list", "[--json] [--config FILE]", "List users with their MFA state and number of app passwords.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	config := f.configFlag()
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	st, code, ok := e.openFor(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	users, err := st.ListUsers(ctx)
	if err != nil {
		return e.fail(f.path, err)
	}
	rows := make([]userRow, 0, len(users))
	for _, u := range users {
		aps, err := st.ListAppPasswords(ctx, u.Name)
		if err != nil {
			return e.fail(f.path, err)
		}
		rows = append(rows, userRow{User: u, AppPasswords: len(aps)})
	}
	if *asJSON {
		if err := writeJSON(e.Stdout, rows); err != nil {
			return e.fail(f.path, err)
		}
		return exitOK
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.Stdout, "No users yet. Add one with: passgate user add NAME --mfa enforced")
		return exitOK
	}
	cells := make([][]string, 0, len(rows))
	for _, r := range rows {
		cells = append(cells, []string{clean(r.Name), string(r.MFA), strconv.Itoa(r.AppPasswords), stamp(r.CreatedAt), stamp(r.UpdatedAt)})
	}
	if err := table(e.Stdout, []string{"NAME", "MFA", "APP PASSWORDS", "CREATED", "UPDATED"}, cells); err != nil {
		return e.fail(f.path, err)
	}
	return exitOK
}

func cmdUserSetMFA(ctx context.Context, e *env, args []string) int {
	f := newFlags("user set-mfa", "NAME disabled|enabled|enforced [--config FILE]",
		"Change a user's MFA state. enabled: the primary password still works, but each such login is audited as\n"+
			"\"would be refused once enforced\". enforced: only app passwords open IMAP, SMTP and LDAP.\n"+
			"A user without a row is added. App passwords are kept whatever the state.")
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 2, 2)
	if !ok {
		return code
	}
	state, err := store.ParseMFAState(pos[1])
	if err != nil {
		return e.usageError(f.path, err.Error())
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	name := pos[0]
	detail := "mfa=" + string(state)
	if err := loginNameProblem(cfg, name); err != nil {
		return e.done(ctx, st, f.path, "user.set-mfa", name, detail, err)
	}
	before, err := st.UserMFA(ctx, name)
	if err != nil {
		return e.done(ctx, st, f.path, "user.set-mfa", name, detail, err)
	}
	detail += " was=" + string(before)
	u, err := st.SetMFA(ctx, name, state)
	if err != nil {
		return e.done(ctx, st, f.path, "user.set-mfa", name, detail, err)
	}
	fmt.Fprintf(e.Stdout, "MFA of %s is now %s (was %s).\n", clean(u.Name), u.MFA, before)
	if u.MFA == store.MFAEnforced {
		aps, err := st.ListAppPasswords(ctx, name)
		if err == nil && len(aps) == 0 {
			fmt.Fprintf(e.Stdout, "%s has no app password yet: IMAP, SMTP and LDAP logins fail until one is created with\n  passgate app-password create %s --label LABEL\n", clean(u.Name), clean(u.Name))
		}
	}
	return e.done(ctx, st, f.path, "user.set-mfa", name, detail, nil)
}

func cmdUserDelete(ctx context.Context, e *env, args []string) int {
	f := newFlags("user delete", "NAME [--config FILE]",
		"Delete a user and all the user's app passwords. The user falls back to policy.default_mfa. The audit trail is kept.")
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 1, 1)
	if !ok {
		return code
	}
	st, code, ok := e.openFor(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	name := pos[0]
	aps, err := st.ListAppPasswords(ctx, name)
	if err != nil {
		return e.done(ctx, st, f.path, "user.delete", name, "", err)
	}
	if err := st.DeleteUser(ctx, name); err != nil {
		return e.done(ctx, st, f.path, "user.delete", name, "", err)
	}
	fmt.Fprintf(e.Stdout, "Deleted user %s and %d app password(s).\n", clean(name), len(aps))
	return e.done(ctx, st, f.path, "user.delete", name, fmt.Sprintf("app_passwords=%d", len(aps)), nil)
}
