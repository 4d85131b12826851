package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

// mfaGroupsYAML is the ldap section and policy lines that make the groups
// of the test slapd mfa groups, read with the service account and cached
// for ttl; url is the directory's (the test slapd's unless a test gives a
// dead one).
func mfaGroupsYAML(t *testing.T, dir, url, ttl string) (policy, extra string) {
	t.Helper()
	sl := ldapEnv(t).slapd
	pwFile := filepath.Join(dir, "ldap.secret")
	if err := os.WriteFile(pwFile, []byte(sl.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	policy = fmt.Sprintf("  mfa_groups: [%s, %s]\n  mfa_group_ttl: %s\n",
		strconv.Quote("cn=mfa-users,ou=groups,"+sl.BaseDN), strconv.Quote("cn=mfa-posix,ou=groups,"+sl.BaseDN), ttl)
	extra = fmt.Sprintf("ldap:\n  user_dn_templates: [%s]\n  upstream:\n    url: %s\n    service_dn: %s\n    service_password_file: %s\n",
		strconv.Quote(sl.UserTemplate), strconv.Quote(url), strconv.Quote(sl.ServiceDN), strconv.Quote(pwFile))
	return policy, extra
}

// setGroupMember adds user to or removes user from cn=mfa-users as the
// directory's administrator.
func setGroupMember(t *testing.T, user string, member bool) {
	t.Helper()
	sl := ldapEnv(t).slapd
	l, err := ldap.DialURL(sl.URL)
	if err != nil {
		t.Fatalf("dial slapd: %v", err)
	}
	defer l.Close()
	if err := l.Bind(sl.AdminDN, sl.AdminPassword); err != nil {
		t.Fatalf("bind as the directory's administrator: %v", err)
	}
	req := ldap.NewModifyRequest("cn=mfa-users,ou=groups,"+sl.BaseDN, nil)
	if member {
		req.Add("member", []string{sl.UserDN(user)})
	} else {
		req.Delete("member", []string{sl.UserDN(user)})
	}
	if err := l.Modify(req); err != nil {
		t.Fatalf("change the members of cn=mfa-users (%s member %v): %v", user, member, err)
	}
}

// TestMFAGroupsIMAP: a member of a policy.mfa_groups group (groupOfNames
// member, or posixGroup memberUid) is enforced without a row in the
// store; a user removed from the group follows within the TTL; both are
// waited for by their state, the login's reply.
func TestMFAGroupsIMAP(t *testing.T) {
	d := env.dovecot
	dir := t.TempDir()
	policyYAML, extra := mfaGroupsYAML(t, dir, ldapEnv(t).slapd.URL, "1s")
	p := startPassgate(t, passgateConfig{policyYAML: policyYAML, extraYAML: extra})
	// bob has a row with MFA enabled (so that he may have an app
	// password), which alone lets his primary password through.
	p.admin(t, "user", "add", "bob", "--mfa", "enabled")
	app := p.appPassword(t, "bob", "phone")
	if got := p.rawLoginFrom(t, "127.0.0.71", "bob", d.Users["bob"]); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("bob's primary password outside the group: %q, want a OK", got)
	}
	setGroupMember(t, "bob", true)
	removed := false
	t.Cleanup(func() {
		if !removed { // leave the shared tree as it was
			setGroupMember(t, "bob", false)
		}
	})
	var last string
	if !eventually(patience, func() bool {
		last = p.rawLoginFrom(t, "127.0.0.71", "bob", d.Users["bob"])
		return last == "a "+uniformFailure+"\r\n"
	}) {
		t.Fatalf("bob's primary password once he is in cn=mfa-users: last reply %q, want the uniform failure", last)
	}
	if got := p.rawLoginFrom(t, "127.0.0.71", "bob", app); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("bob's app password in the group: %q, want a OK", got)
	}
	// carol has no row; memberUid of the posixGroup enforces her.
	if got := p.rawLoginFrom(t, "127.0.0.72", "carol", d.Users["carol"]); got != "a "+uniformFailure+"\r\n" {
		t.Errorf("carol (memberUid of cn=mfa-posix, no row) with her primary password: %q, want the uniform failure", got)
	}
	setGroupMember(t, "bob", false)
	removed = true
	if !eventually(patience, func() bool {
		last = p.rawLoginFrom(t, "127.0.0.71", "bob", d.Users["bob"])
		return strings.HasPrefix(last, "a OK")
	}) {
		t.Fatalf("bob's primary password after his removal from cn=mfa-users: last reply %q, want a OK within the TTL", last)
	}
	out := p.admin(t, "audit", "--user", "carol", "--json")
	if !strings.Contains(out, "mfa group") {
		t.Errorf("carol's audit does not say that an mfa group enforced her:\n%s", out)
	}
}

// TestMFAGroupsDirectoryDown: with the directory unreachable, a user
// whose decision depends on the groups gets the temporary failure (the
// primary password must not pass for a member, nor be called wrong for
// a non-member), while an app password of a user with MFA on works.
func TestMFAGroupsDirectoryDown(t *testing.T) {
	d := env.dovecot
	dir := t.TempDir()
	policyYAML, extra := mfaGroupsYAML(t, dir, "ldap://"+deadAddr(t), "1s")
	p := startPassgate(t, passgateConfig{policyYAML: policyYAML, extraYAML: extra})
	p.enforce(t, "dave")
	app := p.appPassword(t, "dave", "laptop")
	if got := p.rawLoginFrom(t, "127.0.0.73", "bob", d.Users["bob"]); !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
		t.Errorf("bob (no row) with the directory down: %q, want a NO [UNAVAILABLE]", got)
	}
	if got := p.rawLoginFrom(t, "127.0.0.73", "dave", app); !strings.HasPrefix(got, "a OK") {
		t.Errorf("dave's app password (enforced in the store) with the directory down: %q, want a OK", got)
	}
	// dave's primary password gets what bob's got: the answer must not
	// tell that the store enforces dave.
	if got := p.rawLoginFrom(t, "127.0.0.73", "dave", d.Users["dave"]); !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
		t.Errorf("dave (enforced in the store) with his primary password and the directory down: %q, want a NO [UNAVAILABLE] as for bob", got)
	}
}
