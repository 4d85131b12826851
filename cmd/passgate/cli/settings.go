package cli

import (
	"context"
	"fmt"

	"github.com/passgate/passgate/backends/store"
)

// cmdSettings runs "passgate settings SUBCOMMAND".
func cmdSettings(ctx context.Context, e *env, args []string) int {
	return e.group(ctx, "settings", "Show and change global settings.", []command{
		{"set", "change a setting: allow-app-passwords true|false", cmdSettingsSet},
		{"show", "show the settings", cmdSettingsShow},
	}, args)
}

func cmdSettingsSet(ctx context.Context, e *env, args []string) int {
	f := newFlags("settings set", "allow-app-passwords true|false [--config FILE]",
		"Change a global setting. allow-app-passwords false: no app password is accepted and none can be created,\n"+
			"but users and admins can still list and delete theirs.")
	var allow bool
	check := func(pos []string) error {
		if pos[0] != "allow-app-passwords" {
			return fmt.Errorf("unknown setting %q: the one setting is allow-app-passwords", pos[0])
		}
		switch pos[1] {
		case "true":
			allow = true
		case "false":
		default:
			return fmt.Errorf("allow-app-passwords %q: use true or false", pos[1])
		}
		return nil
	}
	return e.onStore(ctx, f, args, 2, check, func(_ *store.Store, ops *adminOps, _ []string) int {
		before, err := ops.SetAllowAppPasswords(ctx, e.cliActor(), allow)
		return e.said(f.path, ops, err, "allow-app-passwords is now %t (was %t).\n", allow, before)
	})
}

func cmdSettingsShow(ctx context.Context, e *env, args []string) int {
	f := newFlags("settings show", "[--json] [--config FILE]", "Show the global settings.")
	asJSON := f.Bool("json", false, "print JSON for scripts")
	return e.onStore(ctx, f, args, 0, nil, func(st *store.Store, _ *adminOps, _ []string) int {
		allow, err := st.AllowAppPasswords(ctx)
		if err != nil {
			return e.fail(f.path, err)
		}
		if *asJSON {
			return e.wrote(f.path, writeJSON(e.Stdout, map[string]bool{"allow_app_passwords": allow}))
		}
		fmt.Fprintf(e.Stdout, "allow-app-passwords: %t\n", allow)
		return exitOK
	})
}
