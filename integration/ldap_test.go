package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/ldapupstream"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/proxy/ldapfront"
)

// The failure text every refused bind gets from passgate.
const ldapFailureText = "invalid credentials"

// dialGate connects to passgate's plain listener and runs StartTLS.
func dialGate(t testing.TB, g *ldapGate) *ldap.Conn {
	t.Helper()
	l, err := ldap.DialURL(g.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.StartTLS(ldapEnv(t).certs.ClientTLS()); err != nil {
		t.Fatalf("StartTLS through passgate: %v", err)
	}
	return l
}

func ldapCode(err error) uint16 {
	var le *ldap.Error
	if errors.As(err, &le) {
		return le.ResultCode
	}
	return 0
}

// wantBindFailure checks that err is passgate's one uniform failure.
func wantBindFailure(t *testing.T, err error) {
	t.Helper()
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultInvalidCredentials {
		t.Fatalf("bind: got %v, want invalidCredentials (49)", err)
	}
	if !strings.Contains(le.Err.Error(), ldapFailureText) {
		t.Fatalf("bind failure text %q, want %q", le.Err, ldapFailureText)
	}
}

func attrs(e *ldap.Entry) map[string]string {
	m := map[string]string{}
	for _, a := range e.Attributes {
		m[strings.ToLower(a.Name)] = strings.Join(a.Values, ",")
	}
	return m
}

// TestLDAPApplicationFlow is the usual application flow in relay mode: the
// application binds as its own account (no MFA: checked by slapd itself),
// searches for the user's entry, then binds as the user with an app
// password; the user's searches then run with the user's ACL.
func TestLDAPApplicationFlow(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{})
	g.setMFA(t, "alice", store.MFAEnforced)
	app := g.appPassword(t, "alice", "wiki")

	l := dialGate(t, g)
	if err := l.Bind(e.slapd.AppDN, e.slapd.AppPassword); err != nil {
		t.Fatalf("application account bind through passgate: %v", err)
	}
	res, err := l.Search(ldap.NewSearchRequest("ou=people,"+e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(&(objectClass=inetOrgPerson)(mail=alice@example.test))", []string{"uid", "cn"}, nil))
	if err != nil {
		t.Fatalf("application search: %v", err)
	}
	if len(res.Entries) != 1 || res.Entries[0].DN != e.slapd.UserDN("alice") {
		t.Fatalf("application search found %d entries, want alice's", len(res.Entries))
	}
	userDN := res.Entries[0].DN

	// Rebind as the user with the app password, on the same connection.
	if err := l.Bind(userDN, app); err != nil {
		t.Fatalf("user bind with app password: %v", err)
	}
	who, err := l.WhoAmI(nil)
	if err != nil || who.AuthzID != "dn:"+userDN {
		t.Fatalf("WhoAmI after app-password bind: %q, %v; want dn:%s", who.AuthzID, err, userDN)
	}

	// What alice may read: cn and mail of everyone, her own description,
	// nobody's telephoneNumber (only the service account may read it).
	res, err = l.Search(ldap.NewSearchRequest("ou=people,"+e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(|(uid=alice)(uid=bob))", []string{"cn", "mail", "description", "telephoneNumber"}, nil))
	if err != nil {
		t.Fatalf("search as alice: %v", err)
	}
	if len(res.Entries) != 2 {
		t.Fatalf("search as alice: %d entries, want 2", len(res.Entries))
	}
	for _, en := range res.Entries {
		a := attrs(en)
		if a["cn"] == "" || a["mail"] == "" {
			t.Errorf("%s: cn/mail missing: %v", en.DN, a)
		}
		if a["telephonenumber"] != "" {
			t.Errorf("%s: telephoneNumber visible to alice (only the service account may read it): %v", en.DN, a)
		}
		own := en.DN == userDN
		if own != (a["description"] != "") {
			t.Errorf("%s: description visible=%v, want %v (self only)", en.DN, a["description"] != "", own)
		}
	}
	// Compare runs as alice too.
	ok, err := l.Compare(e.slapd.UserDN("bob"), "mail", "bob@example.test")
	if err != nil || !ok {
		t.Fatalf("compare as alice: %v %v", ok, err)
	}
	if _, err := l.Compare(e.slapd.UserDN("bob"), "telephoneNumber", "+1 555 0102"); ldapCode(err) != ldap.LDAPResultInsufficientAccessRights {
		t.Fatalf("compare of a hidden attribute as alice: %v, want insufficientAccessRights", err)
	}
	// Writes are not relayed for app-password binds.
	err = l.Modify(&ldap.ModifyRequest{DN: userDN, Changes: []ldap.Change{{Operation: ldap.ReplaceAttribute, Modification: ldap.PartialAttribute{Type: "description", Vals: []string{"x"}}}}})
	if ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("modify after app-password bind: %v, want unwillingToPerform", err)
	}
	// A client may not bring its own proxied authorization control.
	_, err = l.Search(ldap.NewSearchRequest(e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(uid=bob)", []string{"telephoneNumber"}, []ldap.Control{ldap.NewControlString(ldapupstream.OIDProxiedAuthz, true, "dn:"+e.slapd.ServiceDN)}))
	if ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("search with the client's own proxied authorization: %v, want unwillingToPerform", err)
	}

	// Paged results and size limits pass through (one upstream connection
	// per client connection keeps the cookie valid).
	paged, err := l.SearchWithPaging(ldap.NewSearchRequest("ou=people,"+e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(objectClass=inetOrgPerson)", []string{"uid"}, nil), 1)
	if err != nil || len(paged.Entries) != 3 {
		t.Fatalf("paged search: %d entries, %v; want 3", len(paged.Entries), err)
	}
	res, err = l.Search(ldap.NewSearchRequest("ou=people,"+e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=inetOrgPerson)", []string{"uid"}, nil))
	if ldapCode(err) != ldap.LDAPResultSizeLimitExceeded || res == nil || len(res.Entries) != 1 {
		t.Fatalf("size limit 1: %v, want sizeLimitExceeded with one entry", err)
	}

	// Several searches in flight on one connection.
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := 0; i < 12; i++ {
		uid := []string{"alice", "bob", "carol"}[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := l.Search(ldap.NewSearchRequest("ou=people,"+e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
				0, 0, false, "(uid="+uid+")", []string{"uid"}, nil))
			switch {
			case err != nil:
				errs <- err
			case len(r.Entries) != 1 || r.Entries[0].GetAttributeValue("uid") != uid:
				errs <- fmt.Errorf("search for %s answered with %d entries", uid, len(r.Entries))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// slapd saw the service account and proxied authorization for alice,
	// never a bind as alice.
	log := e.slapd.Log()
	if !strings.Contains(log, `BIND dn="`+e.slapd.ServiceDN+`"`) {
		t.Errorf("slapd's log shows no bind of the service account")
	}
	if !strings.Contains(log, `PROXYAUTHZ dn="`+userDN+`"`) {
		t.Errorf("slapd's log shows no proxied authorization for %s", userDN)
	}
	if strings.Contains(log, `BIND dn="`+userDN+`"`) {
		t.Errorf("slapd saw a bind as %s: the app password must never reach the directory", userDN)
	}
}

// TestLDAPBindFailures: the enforced user's primary password, a wrong
// password, a deleted app password and one without scope ldap all get the
// same 49 after the same delay, and slapd never sees a bind for them.
func TestLDAPBindFailures(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{failureDelay: 300 * time.Millisecond})
	g.setMFA(t, "carol", store.MFAEnforced)
	imapOnly := g.appPassword(t, "carol", "imap only", "imap")
	deleted := g.appPassword(t, "carol", "old phone")
	if _, err := g.store.DeleteAppPassword(context.Background(), "carol", "old phone"); err != nil {
		t.Fatal(err)
	}
	carolDN := e.slapd.UserDN("carol")
	cases := []struct{ name, user, password string }{
		{"fail/primary-password-of-enforced-user", carolDN, e.slapd.Users["carol"]},
		{"fail/wrong-password", carolDN, "not-the-password"},
		{"fail/deleted-app-password", carolDN, deleted},
		{"fail/app-password-without-ldap-scope", carolDN, imapOnly},
		{"fail/upn-primary-password", "carol@example.test", e.slapd.Users["carol"]},
		{"fail/upn-of-other-domain", "carol@other.test", imapOnly},
		{"fail/domain-primary-password", `EXAMPLE\carol`, e.slapd.Users["carol"]},
		{"fail/unknown-user", e.slapd.UserDN("mallory"), "whatever"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := dialGate(t, g)
			start := time.Now()
			err := l.Bind(tc.user, tc.password)
			wantBindFailure(t, err)
			if d := time.Since(start); d < g.delay {
				t.Errorf("failure after %v, before the failure delay %v", d, g.delay)
			}
		})
	}
	if strings.Contains(e.slapd.Log(), `BIND dn="`+carolDN+`"`) {
		t.Errorf("slapd saw a bind as %s; refused secrets must never reach the directory", carolDN)
	}
}

// TestLDAPBindRules: a password before TLS gets 13, anonymous and
// unauthenticated binds get 53, a user without MFA binds with the primary
// password (checked by slapd), and a DN that spells an enforced user's
// entry in another way is refused.
func TestLDAPBindRules(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{})
	g.setMFA(t, "alice", store.MFAEnforced)

	plain, err := ldap.DialURL(g.url)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Bind(e.slapd.AppDN, e.slapd.AppPassword); ldapCode(err) != ldap.LDAPResultConfidentialityRequired {
		t.Fatalf("password bind before TLS: %v, want confidentialityRequired (13)", err)
	}
	if err := plain.UnauthenticatedBind(e.slapd.AppDN); ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("unauthenticated bind: %v, want unwillingToPerform (53)", err)
	}
	if err := plain.UnauthenticatedBind(""); ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("anonymous bind: %v, want unwillingToPerform (53)", err)
	}
	if _, err := plain.Search(ldap.NewSearchRequest(e.slapd.BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", nil, nil)); ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("anonymous search: %v, want unwillingToPerform (53)", err)
	}

	l := dialGate(t, g)
	if err := l.Bind(e.slapd.UserDN("bob"), e.slapd.Users["bob"]); err != nil {
		t.Fatalf("bob (no MFA) with primary password: %v", err)
	}
	r, err := l.Search(ldap.NewSearchRequest(e.slapd.UserDN("bob"), ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"description"}, nil))
	if err != nil || len(r.Entries) != 1 || r.Entries[0].GetAttributeValue("description") == "" {
		t.Fatalf("bob's own search: %v", err)
	}
	// Other spellings of alice's name that slapd accepts (the userid alias
	// and the OID of uid; fullwidth letters, which slapd's normalisation
	// folds to "alice") are resolved by passgate's service account before
	// any bind, decided for alice, and refused like any failure: slapd
	// never sees a bind as alice.
	logBefore := len(e.slapd.Log())
	spellings := []string{
		"userid=alice,ou=people,dc=example,dc=test",
		"0.9.2342.19200300.100.1.1=alice,ou=people,dc=example,dc=test",
		"uid=ＡＬＩＣＥ,ou=people,dc=example,dc=test",
		"ＡＬＩＣＥ@example.test",
	}
	for _, name := range append(spellings, `EXAMPLE\ａｌｉｃｅ`, "alice@other.test") {
		// A new connection each: passgate closes one after five failures.
		wantBindFailure(t, dialGate(t, g).Bind(name, e.slapd.Users["alice"]))
	}
	wantBindFailure(t, l.Bind(spellings[0], e.slapd.Users["alice"]))
	if binds := regexp.MustCompile(`(?i)BIND dn="[^"]*alice[^"]*" method=128`).FindAllString(e.slapd.Log()[logBefore:], -1); len(binds) > 0 {
		t.Fatalf("slapd saw alice's primary password: %q", binds)
	}
	// After a failed bind the connection is anonymous.
	if _, err := l.Search(ldap.NewSearchRequest(e.slapd.BaseDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", nil, nil)); ldapCode(err) != ldap.LDAPResultUnwillingToPerform {
		t.Fatalf("search after failed bind: %v, want unwillingToPerform", err)
	}
	// Her app password works under every spelling, and passgate acts as
	// her entry, never as the spelling.
	app := g.appPassword(t, "alice", "spellings")
	for _, name := range spellings {
		if err := l.Bind(name, app); err != nil {
			t.Fatalf("app password as %q: %v", name, err)
		}
		if who, err := l.WhoAmI(nil); err != nil || who.AuthzID != "dn:"+e.slapd.UserDN("alice") {
			t.Fatalf("WhoAmI after bind as %q: %q %v", name, who.AuthzID, err)
		}
		r, err := l.Search(ldap.NewSearchRequest(e.slapd.UserDN("alice"), ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"description"}, nil))
		if err != nil || len(r.Entries) != 1 || r.Entries[0].GetAttributeValue("description") == "" {
			t.Fatalf("alice's own search after bind as %q: %v", name, err)
		}
	}
	// An application's account in another spelling resolves to itself
	// and is verified by slapd.
	if err := l.Bind(strings.ToUpper(e.slapd.AppDN), e.slapd.AppPassword); err != nil {
		t.Fatalf("application account in upper case: %v", err)
	}
	wantBindFailure(t, l.Bind("cn=nobody,"+e.slapd.BaseDN, "whatever"))
}

// TestLDAPDirectoryDown: with the directory unreachable, every bind gets
// unavailable (52) after the failure delay, whatever the secret and
// whatever the user's MFA state: the reply tells nothing.
func TestLDAPDirectoryDown(t *testing.T) {
	e := ldapEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ldap://" + ln.Addr().String()
	ln.Close()
	for _, mode := range []ldapfront.Mode{ldapfront.ModeRelay, ldapfront.ModeBindOnly} {
		g := startLDAPGate(t, ldapGateOptions{mode: mode, upstreamURL: dead, failureDelay: 300 * time.Millisecond})
		g.setMFA(t, "alice", store.MFAEnforced)
		cases := []struct{ name, user, password string }{
			{"no-mfa/wrong-password", e.slapd.UserDN("bob"), "not-the-password"},
			{"no-mfa/primary-password", e.slapd.UserDN("bob"), e.slapd.Users["bob"]},
			{"other-spelling", "userid=bob,ou=people,dc=example,dc=test", "x"},
		}
		if mode == ldapfront.ModeRelay {
			cases = append(cases, struct{ name, user, password string }{"enforced/wrong-password", e.slapd.UserDN("alice"), "not-the-password"})
		}
		for _, tc := range cases {
			t.Run(fmt.Sprint(mode)+"/"+tc.name, func(t *testing.T) {
				l := dialGate(t, g)
				start := time.Now()
				err := l.Bind(tc.user, tc.password)
				if ldapCode(err) != ldap.LDAPResultUnavailable {
					t.Fatalf("bind with the directory down: %v, want unavailable (52)", err)
				}
				if d := time.Since(start); d < g.delay {
					t.Errorf("unavailable after %v, before the failure delay %v", d, g.delay)
				}
			})
		}
	}
}

// TestLDAPBindOnly: bind-only mode answers binds and WhoAmI and refuses a
// search with unwillingToPerform and a message that says why.
func TestLDAPBindOnly(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{mode: ldapfront.ModeBindOnly})
	g.setMFA(t, "alice", store.MFAEnforced)
	app := g.appPassword(t, "alice", "vpn")
	l := dialGate(t, g)
	if err := l.Bind("alice@example.test", app); err != nil {
		t.Fatalf("UPN bind with app password: %v", err)
	}
	who, err := l.WhoAmI(nil)
	if err != nil || who.AuthzID != "dn:"+e.slapd.UserDN("alice") {
		t.Fatalf("WhoAmI: %q %v", who.AuthzID, err)
	}
	_, err = l.Search(ldap.NewSearchRequest(e.slapd.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false, "(uid=bob)", nil, nil))
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultUnwillingToPerform || !strings.Contains(le.Err.Error(), "bind-only") {
		t.Fatalf("search in bind-only mode: %v, want unwillingToPerform naming bind-only mode", err)
	}
	// A primary password of an account without MFA is verified by slapd.
	if err := l.Bind(e.slapd.AppDN, e.slapd.AppPassword); err != nil {
		t.Fatalf("application account in bind-only mode: %v", err)
	}
	wantBindFailure(t, l.Bind(e.slapd.AppDN, "wrong"))
}

// TestLDAPRevokedAppPasswordClosesConnection: deleting the app password
// closes the client's connection (at the registry's next check, every
// 200ms here; patience leaves a busy machine all the time it needs).
func TestLDAPRevokedAppPasswordClosesConnection(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{})
	g.setMFA(t, "bob", store.MFAEnforced)
	app := g.appPassword(t, "bob", "tablet")
	l := dialGate(t, g)
	if err := l.Bind(e.slapd.UserDN("bob"), app); err != nil {
		t.Fatal(err)
	}
	if _, err := g.store.DeleteAppPassword(context.Background(), "bob", "tablet"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(patience)
	for !l.IsClosing() {
		if time.Now().After(deadline) {
			t.Fatalf("connection still open %v after its app password was deleted", patience)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLDAPCommandLineClients runs ldapwhoami and ldapsearch as separate
// processes, with an app password, over StartTLS (-ZZ) and over LDAPS.
func TestLDAPCommandLineClients(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{upstreamTLS: "starttls"})
	g.setMFA(t, "alice", store.MFAEnforced)
	app := g.appPassword(t, "alice", "cli")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(app), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, name string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = append(os.Environ(), "LDAPTLS_CACERT="+e.certs.CAFile, "LDAPTLS_REQCERT=demand", "HOME="+dir)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out.String(), errb.String())
		}
		return out.String()
	}
	for _, tc := range []struct {
		name string
		tls  []string
		user string
	}{
		{"starttls/dn", []string{"-H", g.url, "-ZZ"}, e.slapd.UserDN("alice")},
		{"ldaps/dn", []string{"-H", g.ldapsURL}, e.slapd.UserDN("alice")},
		{"ldaps/upn", []string{"-H", g.ldapsURL}, "alice@example.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := append(append([]string{}, tc.tls...), "-x", "-D", tc.user, "-y", pwFile)
			who := run(t, "ldapwhoami", auth...)
			if strings.TrimSpace(who) != "dn:"+e.slapd.UserDN("alice") {
				t.Fatalf("ldapwhoami: %q", who)
			}
			out := run(t, "ldapsearch", append(auth, "-LLL", "-b", "ou=people,"+e.slapd.BaseDN, "(uid=bob)", "mail", "telephoneNumber", "description")...)
			if !strings.Contains(out, "mail: bob@example.test") {
				t.Fatalf("ldapsearch as alice does not show bob's mail:\n%s", out)
			}
			if regexp.MustCompile(`(?i)telephoneNumber|description`).MatchString(out) {
				t.Fatalf("ldapsearch as alice shows what only the service account or bob may read:\n%s", out)
			}
		})
	}
}

// TestLDAPTrustedNetworkPlaintext: a client in trusted_networks may bind
// with a password without TLS.
func TestLDAPTrustedNetworkPlaintext(t *testing.T) {
	e := ldapEnv(t)
	g := startLDAPGate(t, ldapGateOptions{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, upstreamTLS: "ldaps"})
	l, err := ldap.DialURL(g.url)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Bind(e.slapd.AppDN, e.slapd.AppPassword); err != nil {
		t.Fatalf("plaintext bind from a trusted network: %v", err)
	}
}

// TestLDAPServeCLI runs "passgate serve" in-process (cli.Run) with an LDAP
// listener in relay mode in front of slapd (StartTLS upstream), binds with
// an app password over StartTLS and LDAPS, and deletes the app password
// with "passgate app-password delete": the live connection is closed
// within a second.
func TestLDAPServeCLI(t *testing.T) {
	e := ldapEnv(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dbFile, keyFile := filepath.Join(dir, "passgate.db"), filepath.Join(dir, "passgate.key")
	st, err := store.Open(ctx, store.Options{Driver: "sqlite", DSN: dbFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetMFA(ctx, "alice", store.MFAEnforced); err != nil {
		t.Fatal(err)
	}
	_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "wiki", Scopes: []string{"ldap"}})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	app := strings.ReplaceAll(secret, " ", "")

	secretFile := filepath.Join(dir, "ldap.secret")
	if err := os.WriteFile(secretFile, []byte(e.slapd.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var ports [2]int
	for i := range ports {
		if ports[i], err = testenv.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	plain, implicit := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	cfg := fmt.Sprintf(`store:
  driver: sqlite
  dsn: %q
key_file: %q
tls:
  cert_file: %q
  key_file: %q
policy:
  failure_delay: 200ms
ldap:
  listen: %q
  listen_tls: %q
  mode: relay
  user_dn_templates: ["uid={user},ou=people,dc=example,dc=test"]
  upn_domains: ["example.test"]
  upstream:
    url: %q
    tls: starttls
    ca_file: %q
    service_dn: %q
    service_password_file: %q
`, dbFile, keyFile, e.certs.CertFile, e.certs.KeyFile, plain, implicit, e.slapd.URL, e.certs.CAFile, e.slapd.ServiceDN, secretFile)
	cfgFile := filepath.Join(dir, "passgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out syncBuf
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, []string{"serve", "--config", cfgFile}, &out, &out) }()
	var l *ldap.Conn
	for deadline := time.Now().Add(patience); ; {
		l, err = ldap.DialURL("ldap://" + plain)
		if err == nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("passgate serve exited with %d before listening:\n%s", code, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("passgate serve does not listen on %s:\n%s", plain, out.String())
		}
	}
	defer l.Close()
	if err := l.StartTLS(e.certs.ClientTLS()); err != nil {
		t.Fatal(err)
	}
	if err := l.Bind(e.slapd.UserDN("alice"), app); err != nil {
		t.Fatalf("app-password bind through passgate serve: %v\n%s", err, out.String())
	}
	r, err := l.Search(ldap.NewSearchRequest(e.slapd.UserDN("bob"), ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"mail", "telephoneNumber"}, nil))
	if err != nil || len(r.Entries) != 1 || r.Entries[0].GetAttributeValue("mail") == "" || r.Entries[0].GetAttributeValue("telephoneNumber") != "" {
		t.Fatalf("search as alice through passgate serve: %v", err)
	}
	wantBindFailure(t, l.Bind(e.slapd.UserDN("alice"), e.slapd.Users["alice"]))
	if err := l.Bind(e.slapd.UserDN("alice"), app); err != nil {
		t.Fatal(err)
	}
	ls, err := ldap.DialURL("ldaps://"+implicit, ldap.DialWithTLSConfig(e.certs.ClientTLS()))
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if err := ls.Bind("alice@example.test", app); err != nil {
		t.Fatalf("LDAPS bind: %v", err)
	}

	var cliOut, cliErr bytes.Buffer
	if code := cli.Run(ctx, []string{"app-password", "delete", "alice", "--label", "wiki", "--config", cfgFile}, &cliOut, &cliErr); code != 0 {
		t.Fatalf("passgate app-password delete: exit %d\n%s%s", code, cliOut.String(), cliErr.String())
	}
	deadline := time.Now().Add(patience)
	for !l.IsClosing() || !ls.IsClosing() {
		if time.Now().After(deadline) {
			t.Fatal("LDAP connections still open after their app password was deleted")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("passgate serve exited with %d:\n%s", code, out.String())
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
