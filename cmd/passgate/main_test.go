package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// binary is the passgate binary that TestMain builds once.
var binary string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "passgate-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	gotool, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "the go command is needed to build passgate for these tests:", err)
		return 1
	}
	binary = filepath.Join(dir, "passgate")
	build := exec.Command(gotool, "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "go build ./cmd/passgate:", err)
		return 1
	}
	return m.Run()
}

// sandbox is a working directory with its own configuration and SQLite
// store, in which the binary runs.
type sandbox struct {
	t      *testing.T
	dir    string // working directory of the binary
	config string // configuration file, exported as PASSGATE_CONFIG
	db     string // the SQLite file it names
	env    map[string]string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	root := t.TempDir()
	s := &sandbox{t: t, dir: filepath.Join(root, "work"), config: filepath.Join(root, "etc", "passgate.yaml"), db: filepath.Join(root, "data", "passgate.db")}
	for _, d := range []string{s.dir, filepath.Dir(s.config), filepath.Dir(s.db)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, s.config, fmt.Sprintf("store:\n  driver: sqlite\n  dsn: %s\nkey_file: %s\n", s.db, filepath.Join(root, "data", "passgate.key")))
	s.env = map[string]string{"PASSGATE_CONFIG": s.config, "USER": "tester", "HOME": root}
	return s
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout:\n%s--- stderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs the binary in the sandbox with args.
func (s *sandbox) run(args ...string) result {
	s.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range s.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		s.t.Fatalf("run passgate %q: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// withStore creates the sandbox's store ("passgate migrate"): with a
// configuration file, only migrate and serve create one.
func (s *sandbox) withStore() *sandbox {
	s.t.Helper()
	s.must("migrate")
	return s
}

// must runs args and fails the test unless the exit code is 0.
func (s *sandbox) must(args ...string) result {
	s.t.Helper()
	r := s.run(args...)
	if r.code != 0 {
		s.t.Fatalf("passgate %q: %v", args, r)
	}
	return r
}

// check is one expectation about a run.
type check struct {
	name      string
	args      []string
	code      int
	stdout    string // substring; "" checks nothing
	stderr    string // substring; "" checks nothing, "-" wants it empty
	stdoutNot string // must not appear in stdout
}

func (s *sandbox) runChecks(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			r := s.run(c.args...)
			if r.code != c.code {
				t.Errorf("passgate %q: exit %d, want %d\n%v", c.args, r.code, c.code, r)
			}
			if c.stdout != "" && !strings.Contains(r.stdout, c.stdout) {
				t.Errorf("passgate %q: stdout lacks %q\n%v", c.args, c.stdout, r)
			}
			if c.stdoutNot != "" && strings.Contains(r.stdout, c.stdoutNot) {
				t.Errorf("passgate %q: stdout has %q\n%v", c.args, c.stdoutNot, r)
			}
			switch {
			case c.stderr == "-" && r.stderr != "":
				t.Errorf("passgate %q: stderr not empty\n%v", c.args, r)
			case c.stderr != "" && c.stderr != "-" && !strings.Contains(r.stderr, c.stderr):
				t.Errorf("passgate %q: stderr lacks %q\n%v", c.args, c.stderr, r)
			}
			if c.code == 1 && c.args[0] != "check-config" && !strings.HasPrefix(r.stderr, "passgate: ") {
				t.Errorf("passgate %q: a failure must start with \"passgate: \"\n%v", c.args, r)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	s := newSandbox(t).withStore()
	s.must("user", "add", "alice", "--mfa", "enforced")
	s.runChecks(t, []check{
		{"no-command", nil, 2, "", "Usage: passgate COMMAND", ""},
		{"unknown-command", []string{"frobnicate"}, 2, "", `passgate: unknown command "frobnicate"`, ""},
		{"unknown-top-flag", []string{"--verbose"}, 2, "", `unknown command "--verbose"`, ""},
		{"group-without-subcommand", []string{"user"}, 2, "", "Usage: passgate user SUBCOMMAND", ""},
		{"unknown-subcommand", []string{"user", "rename"}, 2, "", `passgate: user: unknown subcommand "rename"`, ""},
		{"flag-before-subcommand", []string{"app-password", "--json", "list"}, 2, "", "a subcommand comes first", ""},
		{"missing-name", []string{"user", "add"}, 2, "", "passgate: user add: missing NAME\nRun 'passgate user add --help' for usage.", ""},
		{"extra-argument", []string{"user", "add", "a", "b"}, 2, "", `unexpected argument "b"`, ""},
		{"bad-mfa-flag", []string{"user", "add", "bob", "--mfa", "sometimes"}, 2, "", `unknown MFA state "sometimes"`, ""},
		{"bad-mfa-arg", []string{"user", "set-mfa", "alice", "on"}, 2, "", `unknown MFA state "on"`, ""},
		{"missing-state", []string{"user", "set-mfa", "alice"}, 2, "", "missing disabled|enabled|enforced", ""},
		{"unknown-flag", []string{"user", "list", "--colour"}, 2, "", "flag provided but not defined: -colour", ""},
		{"repeated-flag", []string{"app-password", "create", "alice", "--label", "a", "--label", "b"}, 2, "", "--label given twice", ""},
		{"missing-label", []string{"app-password", "create", "alice"}, 2, "", "missing --label LABEL", ""},
		{"missing-label-delete", []string{"app-password", "delete", "alice"}, 2, "", "missing --label LABEL", ""},
		{"bad-scope", []string{"app-password", "create", "alice", "--label", "x", "--scopes", "imap,pop3"}, 2, "", `unknown scope "pop3"`, ""},
		{"empty-scopes", []string{"app-password", "create", "alice", "--label", "x", "--scopes", ","}, 2, "", "name at least one of imap, smtp, ldap", ""},
		{"bad-expiry", []string{"app-password", "create", "alice", "--label", "x", "--expires", "soon"}, 2, "", `"soon" is not a duration`, ""},
		{"negative-expiry", []string{"app-password", "create", "alice", "--label", "x", "--expires", "-1h"}, 2, "", "must be positive", ""},
		{"bad-setting", []string{"settings", "set", "colour", "blue"}, 2, "", `unknown setting "colour"`, ""},
		{"bad-bool", []string{"settings", "set", "allow-app-passwords", "maybe"}, 2, "", `allow-app-passwords "maybe": use true or false`, ""},
		{"bad-since", []string{"audit", "--since", "yesterday"}, 2, "", `"yesterday" is neither a duration`, ""},
		{"bad-limit", []string{"audit", "--limit", "-3"}, 2, "", "--limit", ""},
		{"check-config-positional", []string{"check-config", "passgate.yaml"}, 2, "", `unexpected argument "passgate.yaml"`, ""},
		{"migrate-json", []string{"migrate", "--json"}, 2, "", "flag provided but not defined: -json", ""},
	})
	// Nothing above changed the store: only the migration and the first
	// user.add are audited.
	r := s.must("audit", "--json")
	var evs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &evs); err != nil || len(evs) != 2 {
		t.Errorf("usage errors reached the store: %d events, err %v\n%v", len(evs), err, r)
	}
}

func TestHelp(t *testing.T) {
	s := newSandbox(t)
	cmds := [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"migrate"}, {"check-config"}, {"audit"},
		{"user"}, {"user", "add"}, {"user", "list"}, {"user", "set-mfa"}, {"user", "delete"},
		{"app-password"}, {"app-password", "create"}, {"app-password", "list"}, {"app-password", "delete"}, {"app-password", "revoke-all"},
		{"settings"}, {"settings", "set"}, {"settings", "show"},
	}
	var checks []check
	for _, c := range cmds {
		args := c
		want := "Usage: passgate " + strings.Join(c, " ")
		if c[0] == "--help" || c[0] == "-h" || c[0] == "help" {
			want = "Usage: passgate COMMAND"
		} else {
			args = append(append([]string(nil), c...), "--help")
		}
		checks = append(checks, check{strings.Join(args, "_"), args, 0, want, "-", ""})
	}
	checks = append(checks,
		check{"help-flag-after-args", []string{"app-password", "create", "alice", "--label", "x", "--help"}, 0, "Usage: passgate app-password create NAME --label LABEL", "-", ""},
		check{"help-command", []string{"help", "user", "add"}, 0, "Usage: passgate user add NAME", "-", ""},
	)
	s.runChecks(t, checks)
	// --help changed nothing: no app password was created.
	if _, err := os.Stat(s.db); err == nil {
		r := s.must("app-password", "list", "alice")
		if !strings.Contains(r.stdout, "no app passwords") {
			t.Errorf("--help created something:\n%v", r)
		}
	}
}

var passwordLine = regexp.MustCompile(`(?m)^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$`)

func TestAppPasswordFlow(t *testing.T) {
	s := newSandbox(t)
	var all strings.Builder // everything the binary printed
	run := func(want int, args ...string) result {
		t.Helper()
		r := s.run(args...)
		all.WriteString(r.stdout + r.stderr)
		if r.code != want {
			t.Fatalf("passgate %q: exit %d, want %d\n%v", args, r.code, want, r)
		}
		return r
	}

	r := run(0, "migrate")
	if !strings.Contains(r.stdout, "Applied migration") {
		t.Errorf("first migrate applies nothing:\n%v", r)
	}
	r = run(0, "migrate")
	if !strings.Contains(r.stdout, "up to date") {
		t.Errorf("second migrate:\n%v", r)
	}
	run(0, "user", "add", "alice", "--mfa", "enforced")
	r = run(1, "user", "add", "ALICE")
	if !strings.Contains(r.stderr, "passgate: user add: ") || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("duplicate user:\n%v", r)
	}
	run(0, "user", "add", "--mfa=disabled", "bob") // flag before the name

	// create: the password on a line of its own, after the sentence.
	r = run(0, "app-password", "create", "alice", "--label", "Outlook 2010")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 2 || lines[0] != `Created app password "Outlook 2010" for alice (scopes imap,smtp,ldap). Copy it now; it will not be shown again:` ||
		!passwordLine.MatchString(lines[1]) || r.stderr != "" {
		t.Fatalf("create output:\n%v", r)
	}
	password := lines[1]

	// create --json, with flags on both sides of the name.
	r = run(0, "app-password", "create", "--label", "imapsync", "alice", "--scopes", "imap", "--expires", "90d", "--json")
	var created struct {
		User      string     `json:"user"`
		Label     string     `json:"label"`
		Scopes    []string   `json:"scopes"`
		ExpiresAt *time.Time `json:"expires_at"`
		Password  string     `json:"password"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil {
		t.Fatalf("create --json: %v\n%v", err, r)
	}
	if created.User != "alice" || created.Label != "imapsync" || strings.Join(created.Scopes, ",") != "imap" ||
		created.ExpiresAt == nil || time.Until(*created.ExpiresAt) < 89*24*time.Hour || !passwordLine.MatchString(created.Password) {
		t.Errorf("create --json: %+v", created)
	}
	if strings.Count(r.stdout, created.Password) != 1 {
		t.Errorf("JSON shows the password %d times", strings.Count(r.stdout, created.Password))
	}

	// Failures: refused for an MFA-disabled user, duplicate label, unknown label.
	r = run(1, "app-password", "create", "bob", "--label", "phone")
	if !strings.Contains(r.stderr, "MFA is disabled for bob") || !strings.Contains(r.stderr, "passgate user set-mfa bob") || r.stdout != "" {
		t.Errorf("create for MFA-disabled user:\n%v", r)
	}
	r = run(1, "app-password", "create", "alice", "--label", "outlook 2010")
	if !strings.Contains(r.stderr, "already in use") {
		t.Errorf("duplicate label:\n%v", r)
	}

	// list, as a table and as JSON.
	r = run(0, "app-password", "list", "alice")
	if !strings.Contains(r.stdout, "LABEL") || !strings.Contains(r.stdout, "Outlook 2010") || !strings.Contains(r.stdout, "imapsync") {
		t.Errorf("list:\n%v", r)
	}
	r = run(0, "app-password", "list", "alice", "--json")
	var listed []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed) != 2 {
		t.Fatalf("list --json: %v\n%v", err, r)
	}
	for _, a := range listed {
		for k := range a {
			if k == "hash" || k == "password" || k == "Hash" {
				t.Errorf("list --json shows %q", k)
			}
		}
	}
	r = run(0, "user", "list", "--json")
	var users []struct {
		Name         string `json:"name"`
		MFA          string `json:"mfa"`
		AppPasswords int    `json:"app_passwords"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &users); err != nil || len(users) != 2 || users[0].Name != "alice" || users[0].AppPasswords != 2 || users[1].MFA != "disabled" {
		t.Errorf("user list --json: %v %+v\n%v", err, users, r)
	}
	r = run(0, "user", "list")
	if !regexp.MustCompile(`(?m)^alice\s+enforced\s+2\s`).MatchString(r.stdout) {
		t.Errorf("user list:\n%v", r)
	}

	// delete one, then revoke the rest.
	r = run(0, "app-password", "delete", "alice", "--label", "OUTLOOK 2010")
	if !strings.Contains(r.stdout, `Deleted app password "Outlook 2010" of alice.`) {
		t.Errorf("delete:\n%v", r)
	}
	r = run(1, "app-password", "delete", "alice", "--label", "Outlook 2010")
	if !strings.Contains(r.stderr, "no app password labelled") {
		t.Errorf("delete twice:\n%v", r)
	}
	run(0, "app-password", "create", "alice", "--label", "phone")
	r = run(0, "app-password", "revoke-all", "alice")
	if !strings.Contains(r.stdout, "Deleted 2 app password(s) of alice.") {
		t.Errorf("revoke-all:\n%v", r)
	}
	r = run(0, "app-password", "list", "alice")
	if !strings.Contains(r.stdout, "alice has no app passwords") {
		t.Errorf("list after revoke-all:\n%v", r)
	}
	run(0, "user", "set-mfa", "bob", "enabled")
	r = run(0, "user", "delete", "bob")
	if !strings.Contains(r.stdout, "Deleted user bob") {
		t.Errorf("user delete:\n%v", r)
	}
	run(1, "user", "delete", "bob")

	// The audit trail has every change, failures too, and no password.
	r = run(0, "audit", "--json")
	var evs []struct {
		Actor, Action, Subject, Outcome, Detail string
	}
	if err := json.Unmarshal([]byte(r.stdout), &evs); err != nil {
		t.Fatalf("audit --json: %v\n%v", err, r)
	}
	var got []string
	for _, ev := range evs {
		if ev.Actor != "cli:tester" {
			t.Errorf("actor %q, want cli:tester", ev.Actor)
		}
		got = append(got, ev.Action+" "+ev.Subject+" "+ev.Outcome)
	}
	want := []string{
		"store.migrate  success",
		"user.add alice success", "user.add ALICE failure", "user.add bob success",
		"app-password.create alice success", "app-password.create alice success",
		"app-password.create bob failure", "app-password.create alice failure",
		"app-password.delete alice success", "app-password.delete alice failure",
		"app-password.create alice success", "app-password.revoke-all alice success",
		"user.set-mfa bob success", "user.delete bob success", "user.delete bob failure",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit actions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	r = run(0, "audit")
	if !strings.Contains(r.stdout, `label="Outlook 2010" scopes=imap,smtp,ldap`) {
		t.Errorf("audit table lacks the create detail:\n%v", r)
	}

	// The password was shown exactly once and is nowhere else.
	for _, p := range []string{password, created.Password} {
		compact := strings.ReplaceAll(p, " ", "")
		if n := strings.Count(all.String(), p); n != 1 {
			t.Errorf("password %q printed %d times, want once", p, n)
		}
		if strings.Contains(all.String(), compact) {
			t.Errorf("password printed without spaces too")
		}
		for _, suffix := range []string{"", "-wal", "-shm"} {
			data, err := os.ReadFile(s.db + suffix)
			if errors.Is(err, os.ErrNotExist) && suffix != "" {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(data, []byte(compact)) || bytes.Contains(data, []byte(p)) {
				t.Errorf("the password is in %s", filepath.Base(s.db+suffix))
			}
		}
	}
}

func TestSettings(t *testing.T) {
	s := newSandbox(t).withStore()
	s.must("user", "add", "alice", "--mfa", "enabled")
	s.must("app-password", "create", "alice", "--label", "old")
	s.runChecks(t, []check{
		{"show-default", []string{"settings", "show"}, 0, "allow-app-passwords: true", "-", ""},
		{"switch-off", []string{"settings", "set", "allow-app-passwords", "false"}, 0, "allow-app-passwords is now false (was true).", "-", ""},
		{"show-json", []string{"settings", "show", "--json"}, 0, `"allow_app_passwords": false`, "-", ""},
		{"create-refused", []string{"app-password", "create", "alice", "--label", "new"}, 1, "", "app passwords are switched off", ""},
		{"list-still-works", []string{"app-password", "list", "alice"}, 0, "old", "-", ""},
		{"delete-still-works", []string{"app-password", "delete", "alice", "--label", "old"}, 0, "Deleted", "-", ""},
		{"switch-on", []string{"settings", "set", "allow-app-passwords", "true"}, 0, "allow-app-passwords is now true (was false).", "-", ""},
		{"create-works", []string{"app-password", "create", "alice", "--label", "new"}, 0, "Copy it now", "-", ""},
		{"audited", []string{"audit"}, 0, "allow-app-passwords=false was=true", "-", ""},
	})
}

func TestAuditFilters(t *testing.T) {
	s := newSandbox(t).withStore()
	s.must("user", "add", "alice")
	s.must("user", "add", "bob")
	s.must("user", "set-mfa", "bob", "enforced")
	s.env["USER"] = ""
	s.must("user", "set-mfa", "alice", "enforced")
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	s.runChecks(t, []check{
		{"all", []string{"audit"}, 0, "user.set-mfa", "-", ""},
		{"user", []string{"audit", "--user", "BOB"}, 0, "mfa=enforced was=disabled", "-", "alice"},
		{"since-duration", []string{"audit", "--since", "1h", "--user", "alice"}, 0, "user.add", "-", "bob"},
		{"since-days", []string{"audit", "--since", "1d"}, 0, "bob", "-", ""},
		{"since-date", []string{"audit", "--since", "2000-01-01"}, 0, "alice", "-", ""},
		{"since-future", []string{"audit", "--since", future}, 0, "No audit events match.", "-", "alice"},
		{"limit-newest", []string{"audit", "--newest", "--limit", "1"}, 0, "alice", "next page: --after ", "bob"},
		{"limit-oldest", []string{"audit", "--limit", "1"}, 0, "store.migrate", "next page: --after ", "set-mfa"},
		{"actor-without-user", []string{"audit", "--newest", "--limit", "1"}, 0, "  cli  ", "", "cli:tester"},
		{"until-past", []string{"audit", "--until", "2000-01-01"}, 0, "No audit events match.", "-", "alice"},
		{"kind-login", []string{"audit", "--kind", "login"}, 0, "No audit events match.", "-", "alice"},
		{"kind-change", []string{"audit", "--kind", "change", "--user", "bob"}, 0, "user.add", "-", "alice"},
		{"credential-primary", []string{"audit", "--credential", "primary"}, 0, "No audit events match.", "-", "alice"},
		{"bad-kind", []string{"audit", "--kind", "other"}, 2, "", "kind", ""},
		{"bad-address", []string{"audit", "--address", "nowhere"}, 2, "", "not an IP address", ""},
		{"bad-after", []string{"audit", "--after", "x"}, 2, "", "--after", ""},
		{"json-and-jsonl", []string{"audit", "--json", "--jsonl"}, 2, "", "choose one", ""},
	})
	// --limit and --after page through the trail: every event once, in order.
	var paged []string
	after := ""
	for range 10 {
		args := []string{"audit", "--jsonl", "--limit", "1"}
		if after != "" {
			args = append(args, "--after", after)
		}
		r := s.must(args...)
		var ev struct{ Action, Subject string }
		if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil {
			t.Fatalf("audit --jsonl: %v\n%v", err, r)
		}
		paged = append(paged, ev.Action+" "+ev.Subject)
		_, after, _ = strings.Cut(strings.TrimSpace(r.stderr), "next page: --after ")
		if after == "" {
			break
		}
	}
	if want := "store.migrate |user.add alice|user.add bob|user.set-mfa bob|user.set-mfa alice"; strings.Join(paged, "|") != want {
		t.Errorf("paged audit = %q, want %q", strings.Join(paged, "|"), want)
	}
	r := s.must("audit", "--jsonl")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 5 || !strings.HasPrefix(lines[0], `{"id":`) {
		t.Errorf("audit --jsonl = %q, want 5 JSON lines", r.stdout)
	}
	r = s.must("audit", "--user", "bob", "--json")
	var evs []struct{ Subject, Action, Actor string }
	if err := json.Unmarshal([]byte(r.stdout), &evs); err != nil || len(evs) != 2 {
		t.Fatalf("audit --user bob --json: %v\n%v", err, r)
	}
	for _, ev := range evs {
		if ev.Subject != "bob" || ev.Actor != "cli:tester" {
			t.Errorf("event %+v", ev)
		}
	}
	r = s.must("audit", "--json", "--since", future)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("empty audit --json = %q, want []", r.stdout)
	}
}

func TestCheckConfig(t *testing.T) {
	s := newSandbox(t)
	broken := filepath.Join(s.dir, "broken.yaml")
	writeFile(t, broken, `store:
  driver: mysql
policy:
  failure_delay: -1s
  trusted_networks: [10.0.0.0/33]
imap:
  listen: 127.0.0.1:1143
  upstream:
    tls: tls
`)
	typo := filepath.Join(s.dir, "typo.yaml")
	writeFile(t, typo, "store:\n  drivr: sqlite\nlog:\n  level: info\n  level: debug\n")
	good := filepath.Join(s.dir, "good.yaml")
	writeFile(t, good, "tls:\n  min_version: \"1.0\"\n")
	empty := filepath.Join(s.dir, "empty.yaml")
	writeFile(t, empty, "")
	comments := filepath.Join(s.dir, "comments.yaml")
	writeFile(t, comments, "# all commented out\n#imap:\n#  listen: 0.0.0.0:143\n")
	// A certificate that is not there and a master password file that is
	// empty, named relative to the file: serve would refuse both.
	const secret = "Never-Printed-7"
	writeFile(t, filepath.Join(s.dir, "empty.secret"), "")
	writeFile(t, filepath.Join(s.dir, "ldap.secret"), secret+"\n"+secret+"\n")
	files := filepath.Join(s.dir, "files.yaml")
	writeFile(t, files, "tls:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\nimap:\n  listen: 127.0.0.1:0\n  upstream:\n    addresses: [127.0.0.1:10143]\n    master_user: passgate\n    master_password_file: empty.secret\n"+
		"ldap:\n  listen: 127.0.0.1:0\n  upstream:\n    url: ldap://127.0.0.1:10389\n    service_dn: cn=passgate\n    service_password_file: ldap.secret\n")
	s.runChecks(t, []check{
		{"empty", []string{"check-config", "--config", empty}, 1, "", empty + ": the file is empty (no key is set)", ""},
		{"comments-only", []string{"check-config", "--config", comments}, 1, "", comments + ": the file is empty", ""},
		{"missing-cert", []string{"check-config", "--config", files}, 1, "", files + `: tls.cert_file ("` + filepath.Join(s.dir, "tls/cert.pem") + `"): with tls.key_file`, ""},
		{"empty-secret", []string{"check-config", "--config", files}, 1, "", files + `: imap.upstream.master_password_file ("` + filepath.Join(s.dir, "empty.secret") + `"): the file is empty`, ""},
		{"two-line-secret", []string{"check-config", "--config", files}, 1, "", `ldap.upstream.service_password_file ("` + filepath.Join(s.dir, "ldap.secret") + `"): more than one line`, ""},
		{"three-problems", []string{"check-config", "--config", files}, 1, "", files + ": 3 problems", ""},
		{"good", []string{"check-config", "--config", good}, 0, "configuration OK: " + good, "warning: tls.min_version", ""},
		{"good-from-env", []string{"check-config"}, 0, "configuration OK: " + s.config, "-", ""},
		{"missing", []string{"check-config", "--config", filepath.Join(s.dir, "nope.yaml")}, 1, "", "nope.yaml", ""},
		{"typo", []string{"check-config", "--config", typo}, 1, "", typo + ": line 5: log.level: duplicate key (first at line 4); keep one", ""},
	})
	r := s.run("check-config", "--config", broken)
	if r.code != 1 || r.stdout != "" {
		t.Fatalf("check-config broken: %v", r)
	}
	want := []string{
		broken + `: store.driver ("mysql"): must be sqlite or postgres`,
		broken + `: policy.trusted_networks[0] ("10.0.0.0/33"): must be a CIDR`,
		broken + `: policy.failure_delay ("-1s"): must be zero or positive`,
		broken + `: imap.upstream.addresses (""): must list at least one host:port`,
		broken + `: imap.upstream.tls ("tls"): must be none, starttls or implicit`,
		broken + `: imap.upstream.master_user (""): must be set`,
		broken + `: imap.upstream.master_password_file (""): must be set`,
		"passgate: check-config: " + broken + ": 7 problems",
	}
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("check-config lists %d lines, want %d:\n%s", len(lines), len(want), r.stderr)
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("line %d: %q\nwant prefix %q", i+1, lines[i], want[i])
		}
	}
	// An admin command on a broken configuration fails with the same list.
	s.env["PASSGATE_CONFIG"] = broken
	r = s.run("user", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "is not valid (7 problems") || !strings.Contains(r.stderr, "\n  imap.upstream.tls") {
		t.Errorf("user list on a broken configuration: %v", r)
	}
}

func TestConfigPrecedence(t *testing.T) {
	s := newSandbox(t)
	flagFile := filepath.Join(s.dir, "flag.yaml")
	envFile := filepath.Join(s.dir, "env.yaml")
	for _, f := range []string{flagFile, envFile} {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		writeFile(t, f, fmt.Sprintf("store:\n  dsn: %s.db\nkey_file: %s.key\n", name, name))
	}
	writeFile(t, filepath.Join(s.dir, "passgate.yaml"), "store:\n  dsn: cwd.db\nkey_file: cwd.key\n")
	cases := []struct {
		name   string
		env    string
		flag   bool
		cwdCfg bool
		wantDB string
		wantOK string
	}{
		{"flag-over-env", envFile, true, true, "flag.db", flagFile},
		{"env-over-cwd", envFile, false, true, "env.db", envFile},
		{"cwd-over-defaults", "", false, true, "cwd.db", "passgate.yaml"},
		{"defaults", "", false, false, "passgate.db", "built-in defaults"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.cwdCfg {
				os.Remove(filepath.Join(s.dir, "passgate.yaml"))
			}
			s.env["PASSGATE_CONFIG"] = tc.env
			args := []string{"user", "add", "u-" + tc.name}
			mig := []string{"migrate"}
			if tc.flag {
				args = append(args, "--config", flagFile)
				mig = append(mig, "--config", flagFile)
			}
			if tc.wantOK != "built-in defaults" {
				// With a file, the admin commands need the store
				// that migrate creates.
				if r := s.run(args...); r.code != 1 || !strings.Contains(r.stderr, "store "+filepath.Join(s.dir, tc.wantDB)+" does not exist") {
					t.Errorf("user add before migrate:\n%v", r)
				}
				s.must(mig...)
			}
			s.must(args...)
			if _, err := os.Stat(filepath.Join(s.dir, tc.wantDB)); err != nil {
				t.Errorf("store %s not used: %v", tc.wantDB, err)
			}
			ck := []string{"check-config"}
			if tc.flag {
				ck = append(ck, "--config", flagFile)
			}
			r := s.must(ck...)
			if strings.TrimSpace(r.stdout) != "configuration OK: "+tc.wantOK {
				t.Errorf("check-config: %q, want %q", r.stdout, "configuration OK: "+tc.wantOK)
			}
			r = s.must(append([]string{"user", "list", "--json"}, args[3:]...)...)
			if !strings.Contains(r.stdout, "u-"+tc.name) || strings.Count(r.stdout, `"name"`) != 1 {
				t.Errorf("store %s holds other users:\n%s", tc.wantDB, r.stdout)
			}
		})
	}
}

// TestServeWithoutListenerCreatesNothing: serve with a configuration that
// names no listener fails with a message that says which keys to set,
// before it creates the store or the key file.
func TestServeWithoutListenerCreatesNothing(t *testing.T) {
	s := newSandbox(t)
	r := s.run("serve")
	if r.code != 1 || !strings.Contains(r.stderr, "no listener configured: set imap.listen, smtp.listen or ldap.listen (or their listen_tls), or web.listen") {
		t.Fatalf("serve without a listener:\n%v", r)
	}
	for _, f := range []string{s.db, filepath.Join(filepath.Dir(s.db), "passgate.key")} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("serve without a listener left %s behind (%v)", f, err)
		}
	}
}
