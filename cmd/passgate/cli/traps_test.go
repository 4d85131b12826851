package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestAdminTraps covers the admin commands' answers to the mistakes an
// operator makes in the first hour (issue 14).
func TestAdminTraps(t *testing.T) {
	cfg := adminConfig(t)
	// A user whose name holds the separator "*" could never log in: the
	// decision refuses such names (a "victim*master" login).
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"fail/add-separator", []string{"user", "add", "a*b", "--config", cfg}, 1, "", `passgate: user add: user name "a*b" contains "*", the upstream's master-user separator`},
		{"fail/add-space", []string{"user", "add", "a b", "--config", cfg}, 1, "", "contains a space or control character"},
		{"fail/add-control", []string{"user", "add", "a\x01b", "--config", cfg}, 1, "", "contains a space or control character"},
		{"fail/set-mfa-separator", []string{"user", "set-mfa", "x*passgate", "enforced", "--config", cfg}, 1, "", `user name "x*passgate" contains "*"`},
		{"fail/app-password-unknown", []string{"app-password", "create", "nobody", "--label", "phone", "--config", cfg}, 1, "", `passgate: app-password create: user nobody does not exist (see "passgate user list"); check the spelling, or add the user with "passgate user add nobody --mfa enabled"`},
		{"ok/add", []string{"user", "add", "dave", "--mfa", "enabled", "--config", cfg}, 0, "Added user dave", ""},
		{"ok/app-password-known", []string{"app-password", "create", "dave", "--label", "phone", "--config", cfg}, 0, "Copy it now", ""},
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
		})
	}
	a := newAdminEnv(nil)
	if a.run(t, "user", "list", "--json", "--config", cfg) != exitOK {
		t.Fatal(a.err.String())
	}
	var users []map[string]any
	if err := json.Unmarshal(a.out.Bytes(), &users); err != nil || len(users) != 1 || users[0]["name"] != "dave" {
		t.Errorf("users after the refusals: %s (%v); want dave alone", a.out.String(), err)
	}
}

// TestNoNewStoreWithConfigFile: with a configuration file, an admin
// command does not create a store or a key; it names what it looked for.
func TestNoNewStoreWithConfigFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "passgate.yaml")
	if err := os.WriteFile(p, []byte("store:\n  dsn: state/passgate.db\nkey_file: state/passgate.key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // elsewhere, as an admin's home directory
	for _, args := range [][]string{
		{"user", "add", "alice"}, {"user", "list"}, {"app-password", "list", "alice"},
		{"settings", "show"}, {"audit"},
	} {
		a := newAdminEnv(nil)
		code := a.run(t, append(args, "--config", p)...)
		want := "store " + filepath.Join(dir, "state/passgate.db") + " does not exist (store.dsn in " + p + ")"
		if code != exitFailure || !strings.Contains(a.err.String(), want) {
			t.Errorf("%q: exit %d, stderr %q; want 1 and %q", args, code, a.err.String(), want)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "state"))
	here, _ := os.ReadDir(".")
	if len(entries) != 0 || len(here) != 0 {
		t.Fatalf("admin commands created %v beside the file and %v in the working directory", entries, here)
	}
	// migrate creates it, beside the file, and then the others work.
	a := newAdminEnv(nil)
	if a.run(t, "migrate", "--config", p) != exitOK {
		t.Fatal(a.err.String())
	}
	if a.run(t, "user", "add", "alice", "--config", p) != exitOK {
		t.Fatal(a.err.String())
	}
	// A lost key file is named too, and not replaced.
	if err := os.Rename(filepath.Join(dir, "state/passgate.key"), filepath.Join(dir, "key.bak")); err != nil {
		t.Fatal(err)
	}
	if code := a.run(t, "user", "list", "--config", p); code != exitFailure || !strings.Contains(a.err.String(), "server key file "+filepath.Join(dir, "state/passgate.key")+" does not exist") {
		t.Errorf("lost key: exit %d, %q", code, a.err.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "state/passgate.key")); err == nil {
		t.Error("a new key file was created")
	}
}

func TestResetKeyConfirmation(t *testing.T) {
	for _, tc := range []struct {
		name        string
		interactive bool
		input       string
		args        []string
		code        int
		stderr      string
		deleted     bool
	}{
		{"usage/script-without-yes", false, "", nil, exitUsage, "there is no terminal to confirm on: add --yes to confirm", false},
		{"usage/yes-alone", false, "", []string{"--yes"}, exitUsage, "--yes confirms --reset-key", false},
		{"fail/terminal-says-no", true, "no\n", nil, exitFailure, "not confirmed: nothing was changed", false},
		{"fail/terminal-closed", true, "", nil, exitFailure, "no answer", false},
		{"ok/terminal-says-reset", true, "reset\n", nil, exitOK, `Type "reset" to go on`, true},
		{"ok/script-with-yes", false, "", []string{"--yes"}, exitOK, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := adminConfig(t)
			a := newAdminEnv(nil)
			if a.run(t, "user", "add", "erin", "--mfa", "enabled", "--config", cfg) != exitOK ||
				a.run(t, "app-password", "create", "erin", "--label", "x", "--config", cfg) != exitOK {
				t.Fatal(a.err.String())
			}
			a.Stdin = strings.NewReader(tc.input)
			a.Interactive = func() bool { return tc.interactive }
			args := []string{"migrate", "--config", cfg}
			if tc.name != "usage/yes-alone" {
				args = append(args, "--reset-key")
			}
			code := a.run(t, append(args, tc.args...)...)
			if code != tc.code || !strings.Contains(a.err.String(), tc.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, a.err.String(), tc.code, tc.stderr)
			}
			a.run(t, "app-password", "list", "erin", "--config", cfg)
			if gone := !strings.Contains(a.out.String(), "x"); gone != tc.deleted {
				t.Errorf("app passwords deleted = %v, want %v: %s", gone, tc.deleted, a.out.String())
			}
		})
	}
}

func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-12-01T10:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	got := readBuildInfo(bi, true).String()
	want := "passgate v1.2.3\ncommit: 0123456789abcdef (modified)\ndate:   2026-12-01T10:00:00Z\ngo:     go1.26.0\n"
	if got != want {
		t.Errorf("version =\n%s\nwant\n%s", got, want)
	}
	if got := readBuildInfo(nil, false); got.Commit != "unknown" || got.GoVersion != "unknown" {
		t.Errorf("without build info: %+v", got)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		a := newAdminEnv(nil)
		if a.run(t, args...) != exitOK || !strings.Contains(a.out.String(), "go:     "+runtime.Version()) || !strings.HasPrefix(a.out.String(), "passgate ") {
			t.Errorf("%q: %q %q", args, a.out.String(), a.err.String())
		}
	}
	a := newAdminEnv(nil)
	var j buildInfo
	if a.run(t, "version", "--json") != exitOK || json.Unmarshal(a.out.Bytes(), &j) != nil || j.GoVersion != runtime.Version() {
		t.Errorf("version --json: %q", a.out.String())
	}
}
