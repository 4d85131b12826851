package cli

import (
	"regexp"
	"strings"
	"testing"
)

// TestAdminCommands walks set-admin, admin-token and the paged user list,
// and checks that the actor is the user behind sudo.
func TestAdminCommands(t *testing.T) {
	cfg := adminConfig(t)
	a := newAdminEnv(map[string]string{"USER": "root", "SUDO_USER": "helpdesk"})
	for _, n := range []string{"carol", "alice", "bob", "dave"} {
		if a.run(t, "user", "add", n, "--mfa", "enabled", "--config", cfg) != exitOK {
			t.Fatalf("user add %s: %s", n, a.err.String())
		}
	}
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"user", "set-admin", "alice", "true"}, exitOK, "alice is now an administrator", ""},
		{[]string{"user", "set-admin", "nobody", "true"}, exitFailure, "", "user nobody not found"},
		{[]string{"user", "set-admin", "alice", "yes"}, exitUsage, "", `"yes": use true or false`},
		{[]string{"user", "list", "--limit", "2"}, exitOK, "alice ", ""},
		{[]string{"admin-token", "create", "hr", "--read-only", "--expires", "30d"}, exitOK, "Copy it now", ""},
		{[]string{"admin-token", "create", "hr"}, exitFailure, "", "already exists"},
		{[]string{"admin-token", "list"}, exitOK, "read-only", ""},
		{[]string{"admin-token", "revoke", "hr"}, exitOK, "Revoked admin token hr.", ""},
		{[]string{"admin-token", "revoke", "hr"}, exitFailure, "", "no admin token named hr"},
		{[]string{"audit", "--user", "alice", "--limit", "1"}, exitOK, "cli:helpdesk", ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code := a.run(t, append(tc.args, "--config", cfg)...)
			if code != tc.code || !strings.Contains(a.out.String(), tc.stdout) || !strings.Contains(a.err.String(), tc.stderr) {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, a.out.String(), a.err.String())
			}
		})
	}
	// Paging: --limit 2, then --after the last name printed.
	a.run(t, "user", "list", "--limit", "2", "--config", cfg)
	if got := regexp.MustCompile(`(?m)^(\w+) `).FindAllStringSubmatch(a.out.String(), -1); len(got) != 3 || got[2][1] != "bob" {
		t.Fatalf("first page:\n%s", a.out.String())
	}
	a.run(t, "user", "list", "--limit", "2", "--after", "bob", "--config", cfg)
	if !strings.Contains(a.out.String(), "carol") || !strings.Contains(a.out.String(), "dave") || strings.Contains(a.out.String(), "alice") {
		t.Errorf("second page:\n%s", a.out.String())
	}
	a.run(t, "user", "list", "--after", "dave", "--json", "--config", cfg)
	if strings.TrimSpace(a.out.String()) != "[]" {
		t.Errorf("past the end: %q", a.out.String())
	}
}
