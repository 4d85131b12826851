package cli

import (
	"context"
	"fmt"
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
	config := f.configFlag()
	pos, code, ok := e.parse(f, args, 2, 2)
	if !ok {
		return code
	}
	if pos[0] != "allow-app-passwords" {
		return e.usageError(f.path, fmt.Sprintf("unknown setting %q: the one setting is allow-app-passwords", pos[0]))
	}
	var allow bool
	switch pos[1] {
	case "true":
		allow = true
	case "false":
	default:
		return e.usageError(f.path, fmt.Sprintf("allow-app-passwords %q: use true or false", pos[1]))
	}
	st, cfg, code, ok := e.openWithConfig(ctx, f.path, *config)
	if !ok {
		return code
	}
	defer st.Close()
	ops := newAdminOps(st, cfg, e.Now)
	before, err := ops.SetAllowAppPasswords(ctx, e.cliActor(), allow)
	if err == nil {
		fmt.Fprintf(e.Stdout, "allow-app-passwords is now %t (was %t).\n", allow, before)
	}
	return e.end(f.path, ops, err)
}

func cmdSettingsShow(ctx context.Context, e *env, args []string) int {
	f := newFlags("settings show", "[--json] [--config FILE]", "Show the global settings.")
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
	allow, err := st.AllowAppPasswords(ctx)
	if err != nil {
		return e.fail(f.path, err)
	}
	if *asJSON {
		if err := writeJSON(e.Stdout, map[string]bool{"allow_app_passwords": allow}); err != nil {
			return e.fail(f.path, err)
		}
		return exitOK
	}
	fmt.Fprintf(e.Stdout, "allow-app-passwords: %t\n", allow)
	return exitOK
}
