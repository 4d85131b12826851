package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
)

// cmdAppPassword runs "passgate app-password SUBCOMMAND".
func cmdAppPassword(ctx context.Context, e *env, args []string) int {
	return e.group(ctx, "app-password", "Manage a user's app passwords: random passwords, one per app or device, shown once.", []command{
		{"create", "create an app password and show it once", cmdAppPasswordCreate},
		{"list", "list a user's app passwords (never the passwords themselves)", cmdAppPasswordList},
		{"delete", "delete one app password", cmdAppPasswordDelete},
		{"revoke-all", "delete all of a user's app passwords", cmdAppPasswordRevokeAll},
	}, args)
}

// parseScopes reads a comma-separated list of scopes.
func parseScopes(s string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, sc := range strings.Split(s, ",") {
		sc = strings.ToLower(strings.TrimSpace(sc))
		switch sc {
		case store.ScopeIMAP, store.ScopeSMTP, store.ScopeLDAP:
		case "":
			continue
		default:
			return nil, fmt.Errorf("--scopes: unknown scope %q: use imap, smtp and/or ldap, separated by commas", sc)
		}
		if !seen[sc] {
			seen[sc] = true
			out = append(out, sc)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--scopes: name at least one of imap, smtp, ldap (or leave --scopes out for all three)")
	}
	return out, nil
}

// createdJSON is what "app-password create --json" prints: the metadata and,
// this once, the password.
type createdJSON struct {
	store.AppPassword
	Password string `json:"password"`
}

func cmdAppPasswordCreate(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password create", "NAME --label LABEL [--scopes imap,smtp,ldap] [--expires DURATION] [--networks CIDR,...] [--json] [--config FILE]",
		"Create an app password for user NAME and print it once. It cannot be shown again: only a keyed hash is kept.\n"+
			"The user's MFA state must be enabled or enforced, and allow-app-passwords must be true.")
	label := f.String("label", "", "`LABEL` naming the app or device, 1-64 characters, unique per user (required)")
	scopes := f.String("scopes", "imap,smtp,ldap", "comma-separated `SCOPES` the password opens")
	expires := f.String("expires", "", "expire after `DURATION`, e.g. 90d or 720h (default: never)")
	networks := f.String("networks", "", "comma-separated `CIDRS` the password may be used from, e.g. 192.0.2.0/24,2001:db8::/32 (default: anywhere)")
	asJSON := f.Bool("json", false, "print JSON for scripts, with the password in the \"password\" field")
	var sc, nets []string
	var expiresAt *time.Time
	check := func([]string) (err error) {
		if *label == "" {
			return errors.New("missing --label LABEL (the name of the app or device, e.g. --label \"Outlook 2010\")")
		}
		if sc, err = parseScopes(*scopes); err != nil {
			return err
		}
		if expiresAt, err = e.expiryFlag(*expires); err != nil {
			return err
		}
		nets, err = parseNetworks(*networks)
		return err
	}
	return e.onStore(ctx, f, args, 1, check, func(_ *store.Store, ops *adminOps, pos []string) int {
		ap, secret, err := ops.CreateAppPasswordFor(ctx, e.cliActor(), pos[0], *label, sc, nets, expiresAt)
		if err != nil {
			return e.end(f.path, ops, err)
		}
		if *asJSON {
			if err := writeJSON(e.Stdout, createdJSON{AppPassword: ap, Password: apppass.Format(secret)}); err != nil {
				return e.fail(f.path, err)
			}
		} else {
			what := "scopes " + strings.Join(ap.Scopes, ",")
			if ap.ExpiresAt != nil {
				what += "; expires " + stamp(*ap.ExpiresAt)
			}
			if len(ap.Networks) > 0 {
				what += "; only from " + netList(ap.Networks)
			}
			fmt.Fprintf(e.Stdout, "Created app password %q for %s (%s). Copy it now; it will not be shown again:\n%s\n",
				ap.Label, clean(ap.User), what, apppass.Format(secret))
		}
		return e.end(f.path, ops, nil)
	})
}

// parseNetworks reads --networks: comma-separated CIDRs or addresses.
func parseNetworks(s string) ([]string, error) {
	var nets []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if _, err := netip.ParsePrefix(n); err != nil {
			if _, aerr := netip.ParseAddr(n); aerr != nil {
				return nil, fmt.Errorf("--networks: %q is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32", n)
			}
		}
		nets = append(nets, n)
	}
	return nets, nil
}

func cmdAppPasswordList(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password list", "NAME [--json] [--config FILE]",
		"List user NAME's app passwords: label, scopes, networks, creation, expiry and last use. The passwords themselves are never shown.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	return e.onStore(ctx, f, args, 1, nil, func(st *store.Store, _ *adminOps, pos []string) int {
		aps, err := st.ListAppPasswords(ctx, pos[0])
		if err != nil {
			return e.fail(f.path, err)
		}
		if *asJSON {
			return e.wrote(f.path, writeJSON(e.Stdout, aps))
		}
		if len(aps) == 0 {
			fmt.Fprintf(e.Stdout, "%s has no app passwords. Create one with: passgate app-password create %s --label LABEL\n", clean(pos[0]), clean(pos[0]))
			return exitOK
		}
		now := e.Now()
		rows := make([][]string, 0, len(aps))
		for _, a := range aps {
			exp := stampPtr(a.ExpiresAt)
			if a.Expired(now) {
				exp += " (expired)"
			}
			used := stampPtr(a.LastUsedAt)
			if a.LastUsedAt != nil {
				used += " " + strings.Join(nonEmpty(a.LastUsedProto, a.LastUsedAddr, a.LastUsedClient), " ")
			}
			from := "anywhere"
			if len(a.Networks) > 0 {
				from = netList(a.Networks)
			}
			rows = append(rows, []string{clean(a.Label), strings.Join(a.Scopes, ","), from, stamp(a.CreatedAt), exp, clean(used)})
		}
		return e.wrote(f.path, table(e.Stdout, []string{"LABEL", "SCOPES", "FROM", "CREATED", "EXPIRES", "LAST USED"}, rows))
	})
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func cmdAppPasswordDelete(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password delete", "NAME --label LABEL [--config FILE]",
		"Delete user NAME's app password LABEL (case ignored). The app that used it is cut off at once; nothing else is.")
	label := f.String("label", "", "`LABEL` of the app password to delete (required)")
	check := func(pos []string) error {
		if *label == "" {
			return errors.New("missing --label LABEL (see 'passgate app-password list " + pos[0] + "')")
		}
		return nil
	}
	return e.onStore(ctx, f, args, 1, check, func(_ *store.Store, ops *adminOps, pos []string) int {
		ap, err := ops.DeleteAppPasswordFor(ctx, e.cliActor(), pos[0], *label)
		return e.said(f.path, ops, err, "Deleted app password %q of %s.\n", ap.Label, clean(ap.User))
	})
}

func cmdAppPasswordRevokeAll(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password revoke-all", "NAME [--config FILE]",
		"Delete all of user NAME's app passwords, e.g. after a lost laptop. The user keeps the MFA state.")
	return e.onStore(ctx, f, args, 1, nil, func(_ *store.Store, ops *adminOps, pos []string) int {
		n, err := ops.RevokeAll(ctx, e.cliActor(), pos[0])
		return e.said(f.path, ops, err, "Deleted %d app password(s) of %s.\n", n, clean(pos[0]))
	})
}

// netList lists an app password's networks.
func netList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
