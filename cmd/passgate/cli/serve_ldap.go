package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/passgate/passgate/backends/ldapupstream"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/ldapfront"
)

// ldapCheckTimeout bounds the start-up check of the LDAP service account.
const ldapCheckTimeout = 10 * time.Second

// buildLDAP makes one service per configured LDAP listener: ldap.listen
// (StartTLS) and ldap.listen_tls (LDAPS). It returns no service when
// neither is set. The directory is ldap.upstream; its service account is
// checked in the background at start (a failure is logged, not fatal: the
// directory may come up later).
func buildLDAP(d *deps) ([]service, error) {
	c := d.cfg.LDAP
	if c.Listen == "" && c.ListenTLS == "" {
		return nil, nil
	}
	if d.engine == nil || d.relays == nil {
		return nil, errors.New("cli: build ldap listeners: missing decision engine or relay registry (a wiring bug in serve)")
	}
	if c.ListenTLS != "" && d.serverTLS == nil {
		return nil, fmt.Errorf("cli: ldap.listen_tls (%q) needs a certificate: set tls.cert_file and tls.key_file in the configuration, or remove ldap.listen_tls", c.ListenTLS)
	}
	up, err := newLDAPClient(c.Upstream)
	if err != nil {
		return nil, err
	}
	d.onStop = append(d.onStop, func() { up.Close() })
	mode := ldapfront.ModeRelay
	if c.Mode == "bind-only" {
		mode = ldapfront.ModeBindOnly
	}
	lim := d.cfg.Policy.Limits
	base := ldapfront.Options{
		Decider:              d.engine,
		Upstream:             LDAPUpstream(up),
		Registry:             d.relays,
		Mode:                 mode,
		UserDNTemplates:      c.UserDNTemplates,
		UPNDomains:           c.UPNDomains,
		AllowAnonymous:       c.AllowAnonymous,
		AllowUnauthenticated: c.AllowUnauthenticated,
		MaxMessageBytes:      c.MaxMessageBytes,
		MaxBindFailures:      lim.MaxAuthFailures,
		PreBindTimeout:       lim.PreLoginTimeout.D(),
	}
	var out []service
	if c.Listen != "" {
		o := base
		o.TLSConfig = d.serverTLS // nil: StartTLS answered unavailable
		o.Listener = "ldap"
		o.Conns = d.metrics.conns("ldap")
		o.Logger = d.log
		srv, err := ldapfront.New(o)
		if err != nil {
			return nil, fmt.Errorf("ldap listener %s (ldap.listen): %w", c.Listen, err)
		}
		out = append(out, frontService("ldap", c.Listen, srv))
	}
	if c.ListenTLS != "" {
		o := base
		o.TLSConfig = d.serverTLS
		o.ImplicitTLS = true
		o.Listener = "ldaps"
		o.Conns = d.metrics.conns("ldaps")
		o.Logger = d.log
		srv, err := ldapfront.New(o)
		if err != nil {
			return nil, fmt.Errorf("ldap listener %s (ldap.listen_tls): %w", c.ListenTLS, err)
		}
		out = append(out, frontService("ldaps", c.ListenTLS, srv))
	}
	if c.Upstream.ServiceDN != "" {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), ldapCheckTimeout)
			defer cancel()
			who, err := up.Check(ctx)
			if err != nil {
				d.log.Error("ldap service account check failed", slog.String("upstream", up.Addr()), slog.Any("err", err))
				return
			}
			d.log.Info("ldap service account check passed", slog.String("upstream", up.Addr()), slog.String("user", who))
		}()
	}
	return out, nil
}

// newLDAPClient returns a client of the directory ldap.upstream names.
func newLDAPClient(u configs.LDAPUpstream) (*ldapupstream.Client, error) {
	var servicePW ldapupstream.Secret
	if u.ServicePasswordFile != "" {
		pw, err := configs.ReadSecretFile(u.ServicePasswordFile)
		if err != nil {
			return nil, fmt.Errorf("ldap.upstream.service_password_file: %w", err)
		}
		servicePW = ldapupstream.Secret(pw)
	}
	return ldapupstream.New(ldapupstream.Options{
		URL:             u.URL,
		TLS:             u.TLS,
		CAFile:          u.CAFile,
		ServerName:      u.ServerName,
		ServiceDN:       u.ServiceDN,
		ServicePassword: servicePW,
	})
}

// mfaGroups returns the reader of policy.mfa_groups (nil when none is
// set) on a directory client of its own, and the func that closes it.
// The groups are read at the first login that needs them, not at start:
// the directory may come up later.
func mfaGroups(cfg *configs.Config) (policy.Groups, func(), error) {
	if len(cfg.Policy.MFAGroups) == 0 {
		return nil, func() {}, nil
	}
	up, err := newLDAPClient(cfg.LDAP.Upstream)
	if err != nil {
		return nil, nil, fmt.Errorf("cli: policy.mfa_groups: %w", err)
	}
	g := up.Groups(ldapupstream.GroupOptions{
		DNs:             cfg.Policy.MFAGroups,
		UserDNTemplates: cfg.LDAP.UserDNTemplates,
		TTL:             cfg.Policy.MFAGroupTTL.D(),
	})
	return g, func() { up.Close() }, nil
}

// LDAPUpstream adapts backends/ldapupstream to ldapfront.Upstream, so
// that neither package imports the other. serve wires it, and the
// integration tests use it as it is.
func LDAPUpstream(up *ldapupstream.Client) ldapfront.Upstream { return ldapAdapter{up} }

// ldapAdapter is LDAPUpstream's value.
type ldapAdapter struct{ up *ldapupstream.Client }

func (a ldapAdapter) Open(ctx context.Context) (ldapfront.Session, error) {
	s, err := a.up.Open(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (a ldapAdapter) Verify(ctx context.Context, dn string, password []byte) (string, bool, error) {
	return a.up.Verify(ctx, dn, password)
}

func (a ldapAdapter) Resolve(ctx context.Context, dn string) (string, bool, error) {
	return a.up.Resolve(ctx, dn)
}

func (a ldapAdapter) HasServiceAccount() bool { return a.up.HasServiceAccount() }
