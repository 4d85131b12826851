package configs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Validate checks the configuration and reports every problem at once
// (errors.Join, one problem per line), each as
//
//	key.full.name (value): what is expected
//
// Validate is pure: it does not read the files the configuration names,
// resolve host names or dial anything, and it does not fill in defaults.
func (c *Config) Validate() error {
	var v problems
	// The order of the sections is the order of the messages.
	c.validateStore(&v)
	c.validateTLS(&v)
	c.validatePolicy(&v)
	c.validateAudit(&v)
	c.validateListeners(&v)
	c.validateIMAP(&v)
	c.validateSMTP(&v)
	c.validateLDAP(&v)
	validateWeb(c, &v)
	c.validateLog(&v)
	return errors.Join(v...)
}

// validateStore checks store and key_file.
func (c *Config) validateStore(v *problems) {
	v.oneOf("store.driver", c.Store.Driver, "sqlite", "postgres")
	if c.Store.DSN == "" {
		v.add("store.dsn", "", "must be set: a file name for sqlite, a postgres:// URL for postgres")
	} else if c.Store.Driver == "postgres" && strings.Contains(c.Store.DSN, "://") {
		if u, err := url.Parse(c.Store.DSN); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			v.add("store.dsn", redactDSN(c.Store.DSN), "must be a postgres:// URL or a key=value string such as \"host=/run/postgresql dbname=passgate\"")
		} else if strings.Contains(u.Host, ",") {
			v.add("store.dsn", redactDSN(c.Store.DSN), "names several hosts in a URL, which lib/pq cannot read: use the key=value form, e.g. \"host=db1,db2 port=5432,5432 dbname=passgate target_session_attrs=read-write\"")
		}
	}
	if c.KeyFile == "" {
		v.add("key_file", "", "must be set: the server key file (created with mode 0600 when missing on a new store)")
	}
}

// validateTLS checks the tls section on its own; which listeners need a certificate is validateListeners' business.
func (c *Config) validateTLS(v *problems) {
	v.oneOf("tls.min_version", c.TLS.MinVersion, "1.0", "1.1", "1.2", "1.3")
	if c.TLS.CertFile != "" && c.TLS.KeyFile == "" {
		v.add("tls.key_file", "", "must be set when tls.cert_file is set")
	}
	if c.TLS.KeyFile != "" && c.TLS.CertFile == "" {
		v.add("tls.cert_file", "", "must be set when tls.key_file is set")
	}
}

// validateAudit checks the audit section: a day's partition is the unit
// of deletion on PostgreSQL, so a retention is at least a day.
func (c *Config) validateAudit(v *problems) {
	if c.Audit.LoginRetention.D() < 24*time.Hour {
		v.add("audit.login_retention", c.Audit.LoginRetention, "must be at least 1d (login events are deleted a day at a time; default 30d)")
	}
	if c.Audit.ChangeRetention.D() < 24*time.Hour {
		v.add("audit.change_retention", c.Audit.ChangeRetention, "must be at least 1d (default 400d)")
	}
}

// validatePolicy checks the policy section: networks, lockout, realms, delays and limits.
func (c *Config) validatePolicy(v *problems) {
	c.validateNetworks(v)
	c.validateLockout(v)
	for i, r := range c.Policy.Realms {
		if r == "" || strings.ContainsAny(r, "@ \t") {
			v.add(fmt.Sprintf("policy.realms[%d]", i), r, "must be a domain such as example.test (no @, no spaces)")
		}
	}
	if c.Policy.FailureDelay < 0 {
		v.add("policy.failure_delay", c.Policy.FailureDelay, "must be zero or positive")
	}
	if c.Policy.MaxAppPasswords < 1 || c.Policy.MaxAppPasswords > 1000 {
		v.add("policy.max_app_passwords", c.Policy.MaxAppPasswords, "must be between 1 and 1000")
	}
	v.oneOf("policy.default_mfa", c.Policy.DefaultMFA, "disabled", "enabled", "enforced")
	c.validateMFAGroups(v)
	c.validateLimits(v)
}

// validateMFAGroups checks policy.mfa_groups and policy.mfa_group_ttl:
// the groups are read from ldap.upstream with its service account, and a
// member is named by ldap.user_dn_templates (groupOfNames) or by the
// login name itself (posixGroup memberUid).
func (c *Config) validateMFAGroups(v *problems) {
	if c.Policy.MFAGroupTTL <= 0 {
		v.add("policy.mfa_group_ttl", c.Policy.MFAGroupTTL, "must be positive, e.g. 60s (how long a group's members are cached)")
	}
	if len(c.Policy.MFAGroups) == 0 {
		return
	}
	for i, g := range c.Policy.MFAGroups {
		if strings.TrimSpace(g) == "" || !strings.Contains(g, "=") {
			v.add(fmt.Sprintf("policy.mfa_groups[%d]", i), g, "must be the DN of a group, e.g. \"cn=mfa-users,ou=groups,dc=example,dc=test\"")
		}
	}
	if c.LDAP.Upstream.URL == "" {
		v.add("ldap.upstream.url", "", "must be set when policy.mfa_groups is set: the groups are read from that directory")
	}
	if c.LDAP.Upstream.ServiceDN == "" {
		v.add("ldap.upstream.service_dn", "", "must be set when policy.mfa_groups is set: the service account reads the groups (and ldap.upstream.service_password_file)")
	}
}

// validateNetworks checks policy.trusted_networks and policy.proxy_networks.
func (c *Config) validateNetworks(v *problems) {
	for i, n := range c.Policy.TrustedNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			v.add(fmt.Sprintf("policy.trusted_networks[%d]", i), n, "must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (write a single address as 192.0.2.7/32)")
		}
	}
	var trusted []netip.Prefix
	for _, n := range c.Policy.TrustedNetworks {
		if p, err := netip.ParsePrefix(n); err == nil {
			trusted = append(trusted, p.Masked())
		}
	}
	for i, n := range c.Policy.ProxyNetworks {
		key := fmt.Sprintf("policy.proxy_networks[%d]", i)
		p, err := netip.ParsePrefix(n)
		if err != nil {
			v.add(key, n, "must be a CIDR such as 10.0.8.5/32: the addresses of the load balancers that send the PROXY protocol")
			continue
		}
		inside := false
		for _, t := range trusted {
			if t.Bits() <= p.Bits() && t.Contains(p.Masked().Addr()) {
				inside = true
			}
		}
		if !inside {
			v.add(key, n, "must lie within policy.trusted_networks: only trusted networks may send the PROXY protocol (add the balancer's address there too)")
		}
	}
}

// validateLockout checks policy.lockout.
func (c *Config) validateLockout(v *problems) {
	lo := c.Policy.Lockout
	for _, f := range []struct {
		key string
		n   int
	}{{"policy.lockout.max_failures", lo.MaxFailures}, {"policy.lockout.max_address_failures", lo.MaxAddressFailures}, {"policy.lockout.max_user_failures", lo.MaxUserFailures}} {
		if f.n < 0 {
			v.add(f.key, f.n, "must be 0 (not counted) or positive")
		}
	}
	if lo.Window < 0 {
		v.add("policy.lockout.window", lo.Window, "must be positive, e.g. 24h (0: the default, 24h)")
	}
	if lo.Duration < 0 {
		v.add("policy.lockout.duration", lo.Duration, "must be positive, e.g. 60s (0: the default, 60s)")
	}
	if lo.MaxDuration < 0 || (lo.MaxDuration > 0 && lo.MaxDuration < lo.Duration) {
		v.add("policy.lockout.max_duration", lo.MaxDuration, "must be at least policy.lockout.duration, e.g. 1h (0: the default, 1h)")
	}
}

// validateLimits checks policy.limits.
func (c *Config) validateLimits(v *problems) {
	l := c.Policy.Limits
	if l.PreLoginTimeout <= 0 {
		v.add("policy.limits.pre_login_timeout", l.PreLoginTimeout, "must be positive, e.g. 60s")
	}
	if l.MaxLineLength < 1024 || l.MaxLineLength > 1<<20 {
		v.add("policy.limits.max_line_length", l.MaxLineLength, "must be between 1024 and 1048576")
	}
	if l.MaxLiteral < 1 || l.MaxLiteral > 1<<20 {
		v.add("policy.limits.max_literal", l.MaxLiteral, "must be between 1 and 1048576")
	}
	if l.MaxCommands < 1 {
		v.add("policy.limits.max_commands", l.MaxCommands, "must be at least 1")
	}
	if l.MaxConnectionsPerAddress < 0 {
		v.add("policy.limits.max_connections_per_address", l.MaxConnectionsPerAddress, "must be 0 (no cap) or positive, e.g. 20")
	}
	if l.MaxPreLoginConnections < 0 {
		v.add("policy.limits.max_pre_login_connections", l.MaxPreLoginConnections, "must be 0 (no cap) or positive, e.g. 1000")
	}
	if l.MaxAuthFailures < 1 {
		v.add("policy.limits.max_auth_failures", l.MaxAuthFailures, "must be at least 1")
	}
}

// validateListeners checks every listen address and that the listeners which need a certificate have one.
func (c *Config) validateListeners(v *problems) {
	v.listenAddr("imap.listen", c.IMAP.Listen)
	v.listenAddr("imap.listen_tls", c.IMAP.ListenTLS)
	v.listenAddr("smtp.listen", c.SMTP.Listen)
	v.listenAddr("smtp.listen_tls", c.SMTP.ListenTLS)
	v.listenAddr("ldap.listen", c.LDAP.Listen)
	v.listenAddr("ldap.listen_tls", c.LDAP.ListenTLS)
	v.listenAddr("web.listen", c.Web.Listen)
	v.listenAddr("metrics.listen", c.Metrics.Listen)
	c.validateCertificateNeeded(v)
}

// validateCertificateNeeded checks that the listeners which need a
// certificate have one.
func (c *Config) validateCertificateNeeded(v *problems) {
	if c.TLS.CertFile == "" {
		// Implicit TLS always needs a certificate; STARTTLS needs one
		// unless plaintext logins are limited to trusted networks.
		for _, ln := range []struct{ key, addr string }{
			{"imap.listen_tls", c.IMAP.ListenTLS},
			{"smtp.listen_tls", c.SMTP.ListenTLS},
			{"ldap.listen_tls", c.LDAP.ListenTLS},
		} {
			if ln.addr != "" {
				v.add("tls.cert_file", "", "must be set: "+ln.key+" needs a certificate (and tls.key_file)")
			}
		}
		if len(c.Policy.TrustedNetworks) == 0 {
			for _, ln := range []struct{ key, addr string }{
				{"imap.listen", c.IMAP.Listen},
				{"smtp.listen", c.SMTP.Listen},
				{"ldap.listen", c.LDAP.Listen},
			} {
				if ln.addr != "" {
					v.add("tls.cert_file", "", "must be set: "+ln.key+" offers STARTTLS and needs a certificate (and tls.key_file), or list the clients allowed plaintext logins in policy.trusted_networks")
				}
			}
		}
	}
}

// validateIMAP checks the imap section's upstream.
func (c *Config) validateIMAP(v *problems) {
	iu := c.IMAP.Upstream
	imapOn := c.IMAP.Listen != "" || c.IMAP.ListenTLS != ""
	v.upstreamAddrs("imap.upstream.addresses", iu.Addresses, imapOn)
	v.oneOf("imap.upstream.tls", iu.TLS, "none", "starttls", "implicit")
	v.oneOf("imap.upstream.login", iu.Login, "master", "passthrough")
	v.oneOf("imap.upstream.master_style", iu.MasterStyle, "authzid", "separator")
	v.oneOf("imap.upstream.forward_client", iu.ForwardClient, "id", "proxy", "none")
	if imapOn && iu.Login == "master" {
		v.required("imap.upstream.master_user", iu.MasterUser, "the Dovecot master user passgate logs in as (imap.upstream.login is master)")
		v.required("imap.upstream.master_password_file", iu.MasterPasswordFile, "a file holding the master user's password (imap.upstream.login is master)")
	}
	if iu.MasterStyle == "separator" && (iu.Separator == "" || strings.ContainsAny(iu.Separator, " \t\r\n\"")) {
		v.add("imap.upstream.separator", iu.Separator, "must be Dovecot's auth_master_user_separator, e.g. \"*\" (no spaces or quotes)")
	}
	if iu.DialTimeout <= 0 {
		v.add("imap.upstream.dial_timeout", iu.DialTimeout, "must be positive, e.g. 5s")
	}
}

// validateSMTP checks the smtp section: upstream and message limits.
func (c *Config) validateSMTP(v *problems) {
	su := c.SMTP.Upstream
	smtpOn := c.SMTP.Listen != "" || c.SMTP.ListenTLS != ""
	v.upstreamAddrs("smtp.upstream.addresses", su.Addresses, smtpOn)
	v.oneOf("smtp.upstream.tls", su.TLS, "none", "starttls", "implicit")
	v.oneOf("smtp.upstream.login", su.Login, "master", "xclient", "passthrough")
	v.oneOf("smtp.upstream.forward_client", su.ForwardClient, "xclient", "proxy", "none")
	if smtpOn && su.Login == "master" {
		v.required("smtp.upstream.master_user", su.MasterUser, "the submission server's master user passgate logs in as (smtp.upstream.login is master)")
		v.required("smtp.upstream.master_password_file", su.MasterPasswordFile, "a file holding the master user's password (smtp.upstream.login is master)")
	}
	if su.DialTimeout <= 0 {
		v.add("smtp.upstream.dial_timeout", su.DialTimeout, "must be positive, e.g. 5s")
	}
	if c.SMTP.MaxMessageBytes < 0 {
		v.add("smtp.max_message_bytes", c.SMTP.MaxMessageBytes, "must be zero (the upstream's SIZE) or positive")
	}
	if c.SMTP.MaxRecipients < 1 {
		v.add("smtp.max_recipients", c.SMTP.MaxRecipients, "must be at least 1")
	}
}

// validateLDAP checks the ldap section: mode, DN templates and upstream.
func (c *Config) validateLDAP(v *problems) {
	lu := c.LDAP.Upstream
	ldapOn := c.LDAP.Listen != "" || c.LDAP.ListenTLS != ""
	v.oneOf("ldap.mode", c.LDAP.Mode, "relay", "bind-only")
	v.oneOf("ldap.upstream.tls", lu.TLS, "none", "starttls")
	for i, tpl := range c.LDAP.UserDNTemplates {
		if !strings.Contains(tpl, "{user}") {
			v.add(fmt.Sprintf("ldap.user_dn_templates[%d]", i), tpl, "must contain {user}, e.g. \"uid={user},ou=people,dc=example,dc=test\"")
		}
	}
	for i, d := range c.LDAP.UPNDomains {
		if d == "" || strings.ContainsAny(d, "@ ,=") {
			v.add(fmt.Sprintf("ldap.upn_domains[%d]", i), d, "must be a domain name such as example.test")
		}
	}
	c.validateLDAPUpstream(v, ldapOn)
	if c.LDAP.MaxMessageBytes < 0 {
		v.add("ldap.max_message_bytes", c.LDAP.MaxMessageBytes, "must be zero (the default, 1 MiB) or positive")
	}
}

// validateLDAPUpstream checks ldap.upstream: its URL, TLS mode and service
// account; ldapOn says whether an ldap listener is on.
func (c *Config) validateLDAPUpstream(v *problems, ldapOn bool) {
	lu := c.LDAP.Upstream
	if lu.URL != "" || ldapOn {
		u, err := url.Parse(lu.URL)
		switch {
		case lu.URL == "":
			v.add("ldap.upstream.url", "", "must be set when an ldap listener is on, e.g. ldap://127.0.0.1:389")
		case err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "":
			v.add("ldap.upstream.url", lu.URL, "must be an ldap:// or ldaps:// URL with a host, e.g. ldap://127.0.0.1:389")
		case u.Scheme == "ldaps" && lu.TLS == "starttls":
			v.add("ldap.upstream.tls", lu.TLS, "must be none with an ldaps:// URL (the connection is TLS already)")
		}
	}
	if (lu.ServiceDN == "") != (lu.ServicePasswordFile == "") {
		if lu.ServiceDN == "" {
			v.add("ldap.upstream.service_dn", "", "must be set when ldap.upstream.service_password_file is set")
		} else {
			v.add("ldap.upstream.service_password_file", "", "must be set when ldap.upstream.service_dn is set")
		}
	} else if ldapOn && c.LDAP.Mode == "relay" && lu.ServiceDN == "" {
		v.add("ldap.upstream.service_dn", "", "must be set in ldap.mode relay: the service account that binds with proxied authorization (and ldap.upstream.service_password_file)")
	}
}

// validateLog checks the log section.
func (c *Config) validateLog(v *problems) {
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	if c.Log.Format != "" {
		v.oneOf("log.format", c.Log.Format, "json", "text")
	}
}

// Warnings returns advice about a valid configuration that still deserves an
// operator's attention, such as TLS versions older than 1.2.
func (c *Config) Warnings() []string {
	var w []string
	if c.TLS.MinVersion == "1.0" || c.TLS.MinVersion == "1.1" {
		w = append(w, fmt.Sprintf("tls.min_version (%q): TLS %s is obsolete; allow it only for clients that cannot do better", c.TLS.MinVersion, c.TLS.MinVersion))
	}
	noCert := c.TLS.CertFile == ""
	for _, l := range []struct {
		key, listen, verb string
	}{{"imap.listen", c.IMAP.Listen, "log in"}, {"smtp.listen", c.SMTP.Listen, "log in"}, {"ldap.listen", c.LDAP.Listen, "bind with a password"}} {
		// On loopback, without TLS, for local clients in
		// trusted_networks (a webmail on the same host, the demo) is a
		// set-up of its own, not an oversight.
		if l.listen != "" && noCert && len(notLoopback([]string{l.listen})) > 0 {
			w = append(w, fmt.Sprintf("%s (%q) without a certificate: STARTTLS is not offered, and only clients in policy.trusted_networks can %s; set tls.cert_file and tls.key_file", l.key, l.listen, l.verb))
		}
	}
	imapOn := c.IMAP.Listen != "" || c.IMAP.ListenTLS != ""
	smtpOn := c.SMTP.Listen != "" || c.SMTP.ListenTLS != ""
	ldapOn := c.LDAP.Listen != "" || c.LDAP.ListenTLS != ""
	if imapOn && c.IMAP.Upstream.Login == "passthrough" {
		w = append(w, `imap.upstream.login ("passthrough"): app passwords cannot log in over IMAP (passthrough hands the upstream the client's own password, and an app password is not one); use master to let them`)
	}
	if smtpOn && c.SMTP.Upstream.Login == "passthrough" {
		w = append(w, `smtp.upstream.login ("passthrough"): app passwords cannot submit mail (passthrough hands the upstream the client's own password, and an app password is not one); use master or xclient to let them`)
	}
	for _, u := range []struct {
		key, tls string
		addrs    []string
		on       bool
	}{{"imap.upstream.tls", c.IMAP.Upstream.TLS, c.IMAP.Upstream.Addresses, imapOn}, {"smtp.upstream.tls", c.SMTP.Upstream.TLS, c.SMTP.Upstream.Addresses, smtpOn}} {
		if u.on && u.tls == "none" {
			if far := notLoopback(u.addrs); len(far) > 0 {
				w = append(w, fmt.Sprintf("%s (\"none\"): passwords travel to %s in clear; use starttls or implicit unless that network is trusted", u.key, strings.Join(far, ", ")))
			}
		}
	}
	if ldapOn && strings.HasPrefix(c.LDAP.Upstream.URL, "ldap://") && c.LDAP.Upstream.TLS != "starttls" {
		if u, err := url.Parse(c.LDAP.Upstream.URL); err == nil && len(notLoopback([]string{u.Host})) > 0 {
			w = append(w, fmt.Sprintf("ldap.upstream.tls (%q) with %s: passwords travel to the directory in clear; use starttls or an ldaps:// URL unless that network is trusted", c.LDAP.Upstream.TLS, c.LDAP.Upstream.URL))
		}
	}
	w = append(w, webWarnings(c)...)
	return w
}

// notLoopback returns the addresses (host:port, or a bare host) whose host
// is not a loopback address or localhost.
func notLoopback(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || host == "localhost" {
			continue
		}
		out = append(out, a)
	}
	return out
}

type problems []error

// add records a problem with key and its value.
func (p *problems) add(key string, value any, expected string) {
	var shown string
	switch x := value.(type) {
	case string:
		shown = strconv.Quote(x)
	case Duration:
		shown = strconv.Quote(x.String())
	default:
		shown = fmt.Sprint(x)
	}
	*p = append(*p, fmt.Errorf("%s (%s): %s", key, shown, expected))
}

func (p *problems) oneOf(key, value string, allowed ...string) {
	for _, a := range allowed {
		if value == a {
			return
		}
	}
	var want string
	switch len(allowed) {
	case 1:
		want = allowed[0]
	case 2:
		want = allowed[0] + " or " + allowed[1]
	default:
		want = strings.Join(allowed[:len(allowed)-1], ", ") + " or " + allowed[len(allowed)-1]
	}
	p.add(key, value, "must be "+want)
}

func (p *problems) required(key, value, what string) {
	if value == "" {
		p.add(key, value, "must be set: "+what)
	}
}

// listenAddr checks an optional host:port to listen on; port 0 picks a free
// port (tests use it).
func (p *problems) listenAddr(key, addr string) {
	if addr == "" {
		return
	}
	if !hostPort(addr, true) {
		p.add(key, addr, "must be host:port such as 127.0.0.1:1143 or [::1]:1143, or empty for off")
	}
}

func (p *problems) upstreamAddrs(key string, addrs []string, needed bool) {
	if needed && len(addrs) == 0 {
		p.add(key, "", "must list at least one host:port when the listener is on, e.g. [127.0.0.1:143]")
	}
	for i, a := range addrs {
		if !hostPort(a, false) {
			p.add(fmt.Sprintf("%s[%d]", key, i), a, "must be host:port such as 127.0.0.1:143")
		}
	}
}

func hostPort(addr string, listen bool) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "" && !listen {
		return false
	}
	if strings.ContainsAny(host, " /\t") {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return false
	}
	return listen || n > 0
}

// redactDSN hides the password of a URL-style DSN.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		if strings.Contains(dsn, "@") || strings.Contains(dsn, "password") {
			return "REDACTED"
		}
		return dsn
	}
	return u.Redacted()
}
