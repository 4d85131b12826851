package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adminEnv is an env with captured output, a fixed clock and variables.
type adminEnv struct {
	env
	out, err bytes.Buffer
	vars     map[string]string
}

var adminNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func newAdminEnv(vars map[string]string) *adminEnv {
	a := &adminEnv{vars: vars}
	a.env = env{
		Stdout: &a.out, Stderr: &a.err,
		Getenv: func(k string) string { return a.vars[k] },
		Now:    func() time.Time { return adminNow },
	}
	return a
}

func (a *adminEnv) run(t *testing.T, args ...string) int {
	t.Helper()
	a.out.Reset()
	a.err.Reset()
	return a.env.run(context.Background(), args)
}

// adminConfig writes a configuration with a SQLite store in a temp dir.
func adminConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "passgate.yaml")
	text := "store:\n  dsn: " + filepath.Join(dir, "p.db") + "\nkey_file: " + filepath.Join(dir, "p.key") + "\n"
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// With a configuration file, only migrate and serve create a store.
	if a := newAdminEnv(nil); a.run(t, "migrate", "--config", p) != exitOK {
		t.Fatalf("migrate: %s", a.err.String())
	}
	return p
}

func TestRunExitCodes(t *testing.T) {
	cfg := adminConfig(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"usage/none", nil, 2, "", "Usage: passgate COMMAND"},
		{"usage/unknown", []string{"nope"}, 2, "", `passgate: unknown command "nope"`},
		{"usage/group", []string{"app-password"}, 2, "", "Usage: passgate app-password SUBCOMMAND"},
		{"usage/bad-flag", []string{"audit", "--bogus"}, 2, "", "passgate: audit: flag provided but not defined: -bogus"},
		{"usage/flag-needs-value", []string{"audit", "--user"}, 2, "", "flag needs an argument: -user"},
		{"help/top", []string{"--help"}, 0, "Usage: passgate COMMAND", ""},
		{"help/help-sub", []string{"help", "settings", "set"}, 0, "Usage: passgate settings set allow-app-passwords true|false", ""},
		{"help/group", []string{"user", "help"}, 0, "Subcommands:", ""},
		{"ok/user-add", []string{"user", "add", "carol", "--config", cfg, "--mfa", "enforced"}, 0, "Added user carol (MFA enforced).", ""},
		{"ok/check-config", []string{"check-config", "--config", cfg}, 0, "configuration OK: " + cfg, ""},
		{"usage/top-level-flag", []string{"--config", cfg}, 2, "", `unknown command "--config"`},
		{"fail/duplicate", []string{"user", "add", "--config", cfg, "Carol"}, 1, "", "passgate: user add: store: user Carol already exists"},
		{"fail/missing-config", []string{"user", "list", "--config", cfg + ".missing"}, 1, "", "passgate: user list: configs: read " + cfg + ".missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAdminEnv(map[string]string{"USER": "root"})
			code := a.run(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, a.out.String(), a.err.String())
			}
			if tc.stdout != "" && !strings.Contains(a.out.String(), tc.stdout) {
				t.Errorf("stdout %q lacks %q", a.out.String(), tc.stdout)
			}
			if tc.stderr != "" && !strings.Contains(a.err.String(), tc.stderr) {
				t.Errorf("stderr %q lacks %q", a.err.String(), tc.stderr)
			}
			if tc.code == 0 && a.err.Len() != 0 {
				t.Errorf("success wrote to stderr: %q", a.err.String())
			}
		})
	}
}

func TestRunCreateUsesClockAndActor(t *testing.T) {
	cfg := adminConfig(t)
	a := newAdminEnv(map[string]string{"PASSGATE_CONFIG": cfg, "USER": "ops"})
	if code := a.run(t, "user", "add", "dave", "--mfa", "enabled"); code != 0 {
		t.Fatalf("user add: %d %s", code, a.err.String())
	}
	if code := a.run(t, "app-password", "create", "dave", "--label", "tablet", "--expires", "30d", "--json"); code != 0 {
		t.Fatalf("create: %d %s", code, a.err.String())
	}
	var got struct {
		ExpiresAt time.Time `json:"expires_at"`
		Password  string    `json:"password"`
	}
	if err := json.Unmarshal(a.out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if want := adminNow.Add(30 * 24 * time.Hour); !got.ExpiresAt.Equal(want) {
		t.Errorf("expires_at = %v, want %v (e.Now + 30d)", got.ExpiresAt, want)
	}
	if code := a.run(t, "audit", "--user", "dave", "--json"); code != 0 {
		t.Fatal(a.err.String())
	}
	if strings.Contains(a.out.String(), got.Password) || strings.Contains(a.out.String(), strings.ReplaceAll(got.Password, " ", "")) {
		t.Error("the audit trail holds the password")
	}
	var evs []struct{ Actor, Action, Detail string }
	if err := json.Unmarshal(a.out.Bytes(), &evs); err != nil || len(evs) != 2 {
		t.Fatalf("audit: %v %s", err, a.out.String())
	}
	if evs[1].Actor != "cli:ops" || evs[1].Action != "app-password.create" ||
		!strings.Contains(evs[1].Detail, `label="tablet" scopes=imap,smtp,ldap expires=2026-12-27T12:00:00Z`) {
		t.Errorf("event %+v", evs[1])
	}
}

func TestParseInterleaved(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		pos   []string
		label string
		json  bool
		code  int
		ok    bool
	}{
		{"ok/flags-first", []string{"--label", "x", "--json", "alice"}, []string{"alice"}, "x", true, 0, true},
		{"ok/flags-last", []string{"alice", "--label=x"}, []string{"alice"}, "x", false, 0, true},
		{"ok/flags-between", []string{"alice", "--json", "bob", "-label", "x"}, []string{"alice", "bob"}, "x", true, 0, true},
		{"ok/double-dash", []string{"--json", "--", "--label", "x"}, []string{"--label", "x"}, "", true, 0, true},
		{"ok/json-false", []string{"--json=false", "a"}, []string{"a"}, "", false, 0, true},
		{"help", []string{"a", "--help"}, nil, "", false, 0, false},
		{"fail/repeated", []string{"--json", "a", "--json"}, nil, "", false, 2, false},
		{"fail/unknown", []string{"a", "--nope"}, nil, "", false, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAdminEnv(nil)
			f := newFlags("test", "NAME...", "test")
			label := f.String("label", "", "")
			asJSON := f.Bool("json", false, "")
			pos, code, ok := a.parse(f, tc.args, 0, -1)
			if ok != tc.ok || code != tc.code {
				t.Fatalf("ok %v code %d, want %v %d (stderr %q)", ok, code, tc.ok, tc.code, a.err.String())
			}
			if !ok {
				return
			}
			if strings.Join(pos, "|") != strings.Join(tc.pos, "|") || *label != tc.label || *asJSON != tc.json {
				t.Errorf("pos %q label %q json %v", pos, *label, *asJSON)
			}
		})
	}
}

func TestOnceKeepsBoolFlags(t *testing.T) {
	var b bool
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.BoolVar(&b, "json", false, "")
	fs.VisitAll(func(fl *flag.Flag) { fl.Value = &once{Value: fl.Value, name: fl.Name} })
	if err := fs.Parse([]string{"--json", "rest"}); err != nil || !b || fs.NArg() != 1 {
		t.Errorf("bool flag after wrapping: err %v b %v args %q", err, b, fs.Args())
	}
}

func TestParseDurationAndSince(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90d", 90 * 24 * time.Hour, true},
		{"1.5d", 36 * time.Hour, true},
		{"720h", 720 * time.Hour, true},
		{"30m", 30 * time.Minute, true},
		{"d", 0, false},
		{"-1d", 0, false},
		{"99999d", 0, false},
		{"soon", 0, false},
	} {
		d, err := parseDuration(tc.in)
		if (err == nil) != tc.ok || d != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v", tc.in, d, err)
		}
	}
	for _, tc := range []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"24h", adminNow.Add(-24 * time.Hour), true},
		{"7d", adminNow.Add(-7 * 24 * time.Hour), true},
		{"2026-01-02", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), true},
		{"2026-01-02T03:04:05Z", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), true},
		{"-1h", time.Time{}, false},
		{"last week", time.Time{}, false},
	} {
		got, err := parseSince(tc.in, adminNow)
		if (err == nil) != tc.ok || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestLoadConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("store:\n  dsn: "+name+".db\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flagFile, envFile := write("flag.yaml"), write("env.yaml")
	for _, tc := range []struct {
		name, flag, env string
		cwd             bool
		wantPath        string
		wantDSN         string
	}{
		{"defaults", "", "", false, "", "passgate.db"},
		// Relative names in a file are read beside the file.
		{"cwd", "", "", true, "passgate.yaml", filepath.Join(dir, "passgate.yaml.db")},
		{"env-over-cwd", "", envFile, true, envFile, filepath.Join(dir, "env.yaml.db")},
		{"flag-over-env", flagFile, envFile, true, flagFile, filepath.Join(dir, "flag.yaml.db")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(filepath.Join(dir, "passgate.yaml"))
			if tc.cwd {
				write("passgate.yaml")
			}
			a := newAdminEnv(map[string]string{"PASSGATE_CONFIG": tc.env})
			cfg, path, err := a.loadConfig(tc.flag)
			if err != nil {
				t.Fatal(err)
			}
			if path != tc.wantPath || cfg.Store.DSN != tc.wantDSN {
				t.Errorf("loadConfig = %q (dsn %q), want %q (dsn %q)", path, cfg.Store.DSN, tc.wantPath, tc.wantDSN)
			}
		})
	}
}

func TestLoadConfigExpandsFromEnv(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte("store:\n  dsn: ${PG_FILE}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := newAdminEnv(map[string]string{"PG_FILE": "x.db"})
	cfg, _, err := a.loadConfig(p)
	if err != nil || cfg.Store.DSN != filepath.Join(filepath.Dir(p), "x.db") {
		t.Fatalf("cfg %+v err %v", cfg, err)
	}
	a = newAdminEnv(nil)
	if _, _, err := a.loadConfig(p); err == nil || !strings.Contains(err.Error(), "PG_FILE is not set") {
		t.Errorf("unset variable: %v", err)
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{
		"Outlook 2010":    "Outlook 2010",
		"évier":           "évier",
		"a\tb":            `a\tb`,
		"\x1b[31mred":     `\x1b[31mred`,
		"line\nbreak":     `line\nbreak`,
		"c1\u0085control": `c1\u0085control`,
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMissingArg(t *testing.T) {
	for _, tc := range []struct {
		syn  string
		n    int
		want string
	}{
		{"NAME [--mfa X]", 0, "NAME"},
		{"NAME disabled|enabled|enforced [--config FILE]", 1, "disabled|enabled|enforced"},
		{"[--json]", 0, "an argument"},
	} {
		if got := missingArg(tc.syn, tc.n); got != tc.want {
			t.Errorf("missingArg(%q, %d) = %q, want %q", tc.syn, tc.n, got, tc.want)
		}
	}
}
