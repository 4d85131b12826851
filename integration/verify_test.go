package integration

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/imapupstream"
	"github.com/passgate/passgate/backends/verify"
	"github.com/passgate/passgate/cmd/passgate/cli"
)

// imapVerifier is the portal's IMAP verifier over a passthrough upstream
// built from opts, as serve builds it from imap.upstream.
func imapVerifier(t *testing.T, opts imapupstream.Options) *verify.IMAP {
	t.Helper()
	opts.Login = imapupstream.LoginPassthrough
	up, err := imapupstream.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return cli.IMAPVerifier(up)
}

// TestVerifyIMAPAndLDAP checks the portal's primary-password verifiers
// against the real Dovecot and slapd: the right password passes, a wrong
// one or an unknown user is ErrRefused, and a server that is not there is
// a fault, never a refusal.
func TestVerifyIMAPAndLDAP(t *testing.T) {
	// Each Verify gets patience of its own: a busy machine makes the
	// checks slower, one after the other, never wrong.
	verifyCtx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		t.Cleanup(cancel)
		return ctx
	}
	d := env.dovecot
	sl := ldapEnv(t).slapd
	ldapCerts := ldapEnv(t).certs
	verifiers := map[string]verify.Verifier{
		"imap/starttls": imapVerifier(t, imapupstream.Options{Addresses: []string{d.IMAPAddr}, TLS: "starttls", TLSConfig: env.certs.ClientTLS()}),
		"imap/implicit": imapVerifier(t, imapupstream.Options{Addresses: []string{"127.0.0.1:1", d.IMAPSAddr}, TLS: "implicit", TLSConfig: env.certs.ClientTLS()}),
		"ldap/starttls": &verify.LDAP{URL: sl.URL, StartTLS: true, TLSConfig: ldapCerts.ClientTLS(), Templates: []string{"uid={user},ou=nobody,dc=example,dc=test", sl.UserTemplate}},
	}
	users := map[string]map[string]string{"imap": d.Users, "ldap": sl.Users}
	for name, v := range verifiers {
		kind := name[:4]
		pw := users[kind]["alice"]
		if pw == "" {
			t.Fatalf("%s: the test server has no alice", name)
		}
		for _, tc := range []struct {
			name, user, pw string
			want           error
		}{
			{"ok", "alice", pw, nil},
			{"wrong-password", "alice", pw + "x", verify.ErrRefused},
			{"unknown-user", "nobody-here", pw, verify.ErrRefused},
			{"empty-password", "alice", "", verify.ErrRefused},
		} {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				if err := v.Verify(verifyCtx(t), tc.user, tc.pw, netip.AddrPort{}); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
					t.Fatalf("Verify = %v, want %v", err, tc.want)
				}
			})
		}
	}
	for name, v := range map[string]verify.Verifier{
		"imap/down": imapVerifier(t, imapupstream.Options{Addresses: []string{"127.0.0.1:1"}, TLS: "none", DialTimeout: time.Second}),
		"ldap/down": &verify.LDAP{URL: "ldap://127.0.0.1:1", Templates: []string{sl.UserTemplate}, DialTimeout: time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			err := v.Verify(verifyCtx(t), "alice", "x", netip.AddrPort{})
			if err == nil || errors.Is(err, verify.ErrRefused) {
				t.Fatalf("Verify against a closed port = %v, want a fault", err)
			}
		})
	}
}

// TestVerifyIMAPForwardsClient: the portal's IMAP check carries the
// address of the person signing in to Dovecot (imap.upstream.forward_client
// id), so that Dovecot's delay after failed logins counts that person and
// not passgate's own address.
func TestVerifyIMAPForwardsClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := env.dovecot
	v := imapVerifier(t, imapupstream.Options{Addresses: []string{d.IMAPAddr}, TLS: "starttls", TLSConfig: env.certs.ClientTLS(), ForwardClient: "id"})
	if err := v.Verify(ctx, "alice", d.Users["alice"], netip.MustParseAddrPort("127.0.0.78:4321")); err != nil {
		t.Fatalf("Verify with the right password: %v", err)
	}
	waitLog(t, d, "user=<alice>, method=PLAIN, rip=127.0.0.78,")
}
