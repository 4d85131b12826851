package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy/account"
)

// cmdUser runs "passgate user SUBCOMMAND".
func cmdUser(ctx context.Context, e *env, args []string) int {
	return e.group(ctx, "user", "Manage users and their MFA state (disabled, enabled, enforced).", []command{
		{"add", "add a user", cmdUserAdd},
		{"list", "list users", cmdUserList},
		{"set-mfa", "change a user's MFA state", cmdUserSetMFA},
		{"set-admin", "mark a user as administrator (true) or not (false)", cmdUserSetAdmin},
		{"set-password", "set a user's primary password for the portal (web.verify: store), read from standard input", cmdUserSetPassword},
		{"delete", "delete a user and all the user's app passwords", cmdUserDelete},
	}, args)
}

func cmdUserAdd(ctx context.Context, e *env, args []string) int {
	f := newFlags("user add", "NAME [--mfa disabled|enabled|enforced] [--config FILE]",
		"Add a user, named by the login name the mail server knows (e.g. alice or alice@example.test).\n"+
			"With --mfa enforced the primary password no longer opens IMAP, SMTP and LDAP; only app passwords do.")
	mfa := f.String("mfa", "", "MFA `STATE`: disabled, enabled or enforced (default: policy.default_mfa)")
	var state store.MFAState
	check := func([]string) (err error) {
		if *mfa != "" {
			if state, err = store.ParseMFAState(*mfa); err != nil {
				return errors.New("--mfa: " + err.Error())
			}
		}
		return nil
	}
	return e.onStore(ctx, f, args, 1, check, func(_ *store.Store, ops *adminOps, pos []string) int {
		u, err := ops.AddUser(ctx, e.cliActor(), pos[0], state)
		return e.said(f.path, ops, err, "Added user %s (MFA %s).\n", clean(u.Name), u.MFA)
	})
}

func cmdUserList(ctx context.Context, e *env, args []string) int {
	f := newFlags("user list", "[--search TEXT] [--limit N] [--after NAME] [--json] [--config FILE]",
		"List users with their MFA state, admin flag and number of app passwords, by name. The store is read\n"+
			"in pages of 1000 (keyset paging), so a million users do not fill memory.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	search := f.String("search", "", "only names containing `TEXT` (case ignored)")
	limit := f.Int("limit", 0, "print at most `N` users (default: all)")
	after := f.String("after", "", "start after user `NAME` (the last name of a previous page)")
	check := func([]string) error {
		if *limit < 0 {
			return errors.New("--limit must be 0 (all) or more")
		}
		return nil
	}
	return e.onStore(ctx, f, args, 0, check, func(_ *store.Store, ops *adminOps, _ []string) int {
		return listUsers(ctx, e, f, ops, asJSON, search, limit, after)
	})
}

// listUsers prints the users of "user list" page by page.
func listUsers(ctx context.Context, e *env, f *cmdFlags, ops *adminOps, asJSON *bool, search *string, limit *int, after *string) int {
	w := bufio.NewWriter(e.Stdout)
	defer w.Flush()
	const format = "%-32s %-9s %-13s %-5s %-20s %s\n"
	n := 0
	cursor := *after
	for {
		size := store.MaxPage
		if *limit > 0 && *limit-n < size {
			size = *limit - n
		}
		if size == 0 {
			break
		}
		page, err := ops.Users(ctx, account.UserQuery{After: cursor, Search: *search, Limit: size})
		if err != nil {
			return e.fail(f.path, err)
		}
		for _, u := range page {
			switch {
			case *asJSON:
				if n == 0 {
					fmt.Fprint(w, "[\n")
				} else {
					fmt.Fprint(w, ",\n")
				}
				b, err := json.Marshal(u)
				if err != nil {
					return e.fail(f.path, err)
				}
				_, _ = w.Write(b)
			default:
				if n == 0 {
					fmt.Fprintf(w, format, "NAME", "MFA", "APP PASSWORDS", "ADMIN", "CREATED", "LAST SIGN-IN")
				}
				fmt.Fprintf(w, format, clean(u.Name), u.MFA, strconv.Itoa(u.AppPasswords), strconv.FormatBool(u.Admin), stamp(u.CreatedAt), stampPtr(u.LastSignIn))
			}
			n++
		}
		if len(page) < size {
			break
		}
		cursor = page[len(page)-1].Name
	}
	switch {
	case *asJSON && n == 0:
		fmt.Fprintln(w, "[]")
	case *asJSON:
		fmt.Fprint(w, "\n]\n")
	case n == 0 && *search == "" && *after == "":
		fmt.Fprintln(w, "No users yet. Add one with: passgate user add NAME --mfa enforced")
	}
	if err := w.Flush(); err != nil {
		return e.fail(f.path, err)
	}
	return exitOK
}

func cmdUserSetMFA(ctx context.Context, e *env, args []string) int {
	f := newFlags("user set-mfa", "NAME disabled|enabled|enforced [--config FILE]",
		"Change a user's MFA state. enabled: the primary password still works, but each such login is audited as\n"+
			"\"would be refused once enforced\". enforced: only app passwords open IMAP, SMTP and LDAP.\n"+
			"A user without a row is added. App passwords are kept whatever the state.")
	var state store.MFAState
	check := func(pos []string) (err error) {
		state, err = store.ParseMFAState(pos[1])
		return err
	}
	return e.onStore(ctx, f, args, 2, check, func(st *store.Store, ops *adminOps, pos []string) int {
		name := pos[0]
		u, before, err := ops.SetMFA(ctx, e.cliActor(), name, state)
		if err != nil {
			return e.end(f.path, ops, err)
		}
		fmt.Fprintf(e.Stdout, "MFA of %s is now %s (was %s).\n", clean(u.Name), u.MFA, before)
		if u.MFA == store.MFAEnforced {
			aps, err := st.ListAppPasswords(ctx, name)
			if err == nil && len(aps) == 0 {
				fmt.Fprintf(e.Stdout, "%s has no app password yet: IMAP, SMTP and LDAP logins fail until one is created with\n  passgate app-password create %s --label LABEL\n", clean(u.Name), clean(u.Name))
			}
		}
		return e.end(f.path, ops, nil)
	})
}

func cmdUserDelete(ctx context.Context, e *env, args []string) int {
	f := newFlags("user delete", "NAME [--config FILE]",
		"Delete a user and all the user's app passwords. The user falls back to policy.default_mfa. The audit trail is kept.")
	return e.onStore(ctx, f, args, 1, nil, func(st *store.Store, ops *adminOps, pos []string) int {
		name := pos[0]
		aps, err := st.ListAppPasswords(ctx, name)
		if err == nil {
			err = ops.DeleteUser(ctx, e.cliActor(), name)
		}
		return e.said(f.path, ops, err, "Deleted user %s and %d app password(s).\n", clean(name), len(aps))
	})
}
