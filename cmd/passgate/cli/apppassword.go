package cli

import (
	"context"
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
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 1, 1)
	if !ok {
		return code
	}
	if *label == "" {
		return e.usageError(f.path, "missing --label LABEL (the name of the app or device, e.g. --label \"Outlook 2010\")")
	}
	sc, err := parseScopes(*scopes)
	if err != nil {
		return e.usageError(f.path, err.Error())
	}
	var expiresAt *time.Time
	if *expires != "" {
		d, err := parseDuration(*expires)
		if err != nil || d <= 0 {
			if err == nil {
				err = fmt.Errorf("%q must be positive", *expires)
			}
			return e.usageError(f.path, "--expires: "+err.Error())
		}
		t := e.Now().Add(d)
		expiresAt = &t
	}
	var nets []string
	for _, n := range strings.Split(*networks, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if _, err := netip.ParsePrefix(n); err != nil {
			if _, aerr := netip.ParseAddr(n); aerr != nil {
				return e.usageError(f.path, fmt.Sprintf("--networks: %q is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32", n))
			}
		}
		nets = append(nets, n)
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	user := pos[0]
	ops := newAdminOps(st, cfg, e.Now)
	ap, secret, err := ops.CreateAppPasswordFor(ctx, e.cliActor(), user, *label, sc, nets, expiresAt)
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
}

func cmdAppPasswordList(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password list", "NAME [--json] [--config FILE]",
		"List user NAME's app passwords: label, scopes, networks, creation, expiry and last use. The passwords themselves are never shown.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
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
	aps, err := st.ListAppPasswords(ctx, pos[0])
	if err != nil {
		return e.fail(f.path, err)
	}
	if *asJSON {
		if err := writeJSON(e.Stdout, aps); err != nil {
			return e.fail(f.path, err)
		}
		return exitOK
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
	if err := table(e.Stdout, []string{"LABEL", "SCOPES", "FROM", "CREATED", "EXPIRES", "LAST USED"}, rows); err != nil {
		return e.fail(f.path, err)
	}
	return exitOK
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
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 1, 1)
	if !ok {
		return code
	}
	if *label == "" {
		return e.usageError(f.path, "missing --label LABEL (see 'passgate app-password list "+pos[0]+"')")
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	ops := newAdminOps(st, cfg, e.Now)
	ap, err := ops.DeleteAppPasswordFor(ctx, e.cliActor(), pos[0], *label)
	if err == nil {
		fmt.Fprintf(e.Stdout, "Deleted app password %q of %s.\n", ap.Label, clean(ap.User))
	}
	return e.end(f.path, ops, err)
}

func cmdAppPasswordRevokeAll(ctx context.Context, e *env, args []string) int {
	f := newFlags("app-password revoke-all", "NAME [--config FILE]",
		"Delete all of user NAME's app passwords, e.g. after a lost laptop. The user keeps the MFA state.")
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 1, 1)
	if !ok {
		return code
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	ops := newAdminOps(st, cfg, e.Now)
	n, err := ops.RevokeAll(ctx, e.cliActor(), pos[0])
	if err == nil {
		fmt.Fprintf(e.Stdout, "Deleted %d app password(s) of %s.\n", n, clean(pos[0]))
	}
	return e.end(f.path, ops, err)
}

// netList lists an app password's networks.
func netList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
