package verify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// LDAP verifies passwords by binding to a directory as the user's DN
// (web.verify: ldap), built from each of ldap.user_dn_templates in turn
// ({user} replaced by the escaped user name).
type LDAP struct {
	URL         string      // ldap:// or ldaps://
	StartTLS    bool        // for ldap:// URLs
	TLSConfig   *tls.Config // verifies the directory's certificate
	Templates   []string    // e.g. "uid={user},ou=people,dc=example,dc=test"
	DialTimeout time.Duration
}

// Verify implements Verifier.
func (v *LDAP) Verify(ctx context.Context, user, password string, _ netip.AddrPort) error {
	if len(password) > MaxPasswordBytes || password == "" || user == "" {
		// An empty password would be an unauthenticated bind, which
		// succeeds without checking anything.
		return ErrRefused
	}
	timeout := v.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	tc := v.TLSConfig
	if tc == nil {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	conn, err := ldap.DialURL(v.URL, ldap.DialWithTLSConfig(tc.Clone()), ldap.DialWithDialer(dialer(timeout)))
	if err != nil {
		return fmt.Errorf("verify: ldap: dial %s (ldap.upstream.url): %w", v.URL, err)
	}
	defer conn.Close()
	conn.SetTimeout(timeout + 10*time.Second)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if v.StartTLS {
		if err := conn.StartTLS(tc.Clone()); err != nil {
			return fmt.Errorf("verify: ldap: StartTLS with %s: %w", v.URL, err)
		}
	}
	esc := ldap.EscapeDN(user)
	for _, t := range v.Templates {
		dn := strings.ReplaceAll(t, "{user}", esc)
		err := conn.Bind(dn, password)
		if err == nil {
			return nil
		}
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			continue
		}
		if ctx.Err() != nil {
			return fmt.Errorf("verify: ldap: bind: %w", errors.Join(ctx.Err(), err))
		}
		return fmt.Errorf("verify: ldap: bind at %s: %w", v.URL, err)
	}
	return ErrRefused
}
