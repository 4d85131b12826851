package configs_test

import (
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/configs"
)

// imapOn returns defaults with a working IMAP listener.
func imapOn() *configs.Config {
	c := configs.Defaults()
	c.TLS.CertFile, c.TLS.KeyFile = "cert.pem", "key.pem"
	c.IMAP.Listen = "127.0.0.1:1143"
	c.IMAP.Upstream.Addresses = []string{"127.0.0.1:143"}
	c.IMAP.Upstream.MasterUser = "passgate"
	c.IMAP.Upstream.MasterPasswordFile = "master.secret"
	return c
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(c *configs.Config)
		want   []string
	}{
		{"ok/defaults", func(c *configs.Config) {}, nil},
		{"ok/imap", func(c *configs.Config) { *c = *imapOn() }, nil},
		{"ok/zero-failure-delay", func(c *configs.Config) { c.Policy.FailureDelay = 0 }, nil},
		{"ok/port-zero-listen", func(c *configs.Config) { *c = *imapOn(); c.IMAP.ListenTLS = "127.0.0.1:0" }, nil},
		{"ok/starttls-without-cert-for-trusted", func(c *configs.Config) {
			*c = *imapOn()
			c.TLS.CertFile, c.TLS.KeyFile = "", ""
			c.Policy.TrustedNetworks = []string{"127.0.0.0/8"}
		}, nil},
		{"ok/passthrough-needs-no-master", func(c *configs.Config) {
			*c = *imapOn()
			c.IMAP.Upstream.Login, c.IMAP.Upstream.MasterUser, c.IMAP.Upstream.MasterPasswordFile = "passthrough", "", ""
		}, nil},
		{"ok/proxy-networks-within-trusted", func(c *configs.Config) {
			c.Policy.TrustedNetworks = []string{"10.0.8.0/24", "2001:db8::/32"}
			c.Policy.ProxyNetworks = []string{"10.0.8.5/32", "10.0.8.0/24", "2001:db8::5/128"}
		}, nil},
		{"fail/proxy-networks", func(c *configs.Config) {
			c.Policy.TrustedNetworks = []string{"10.0.8.0/24"}
			c.Policy.ProxyNetworks = []string{"10.0.8.5", "10.0.9.5/32", "10.0.0.0/8"}
		}, []string{
			`policy.proxy_networks[0] ("10.0.8.5"): must be a CIDR such as 10.0.8.5/32: the addresses of the load balancers that send the PROXY protocol`,
			`policy.proxy_networks[1] ("10.0.9.5/32"): must lie within policy.trusted_networks: only trusted networks may send the PROXY protocol (add the balancer's address there too)`,
			`policy.proxy_networks[2] ("10.0.0.0/8"): must lie within policy.trusted_networks: only trusted networks may send the PROXY protocol (add the balancer's address there too)`}},
		{"ok/lockout", func(c *configs.Config) {
			c.Policy.Lockout = configs.Lockout{MaxFailures: 10, MaxUserFailures: 50, Window: configs.Duration(time.Minute)}
		}, nil},
		{"fail/lockout", func(c *configs.Config) {
			c.Policy.Lockout = configs.Lockout{MaxFailures: -1, Window: configs.Duration(-time.Minute)}
		}, []string{
			`policy.lockout.max_failures (-1): must be 0 (not counted) or positive`,
			`policy.lockout.window ("-1m0s"): must be positive, e.g. 24h (0: the default, 24h)`}},
		{"ok/mfa-groups", func(c *configs.Config) {
			c.Policy.MFAGroups = []string{"cn=mfa-users,ou=groups,dc=example,dc=test"}
			c.LDAP.Upstream.URL = "ldap://127.0.0.1:389"
			c.LDAP.Upstream.ServiceDN, c.LDAP.Upstream.ServicePasswordFile = "cn=passgate,dc=example,dc=test", "ldap.secret"
		}, nil},
		{"fail/mfa-groups", func(c *configs.Config) {
			c.Policy.MFAGroups = []string{"mfa-users"}
			c.Policy.MFAGroupTTL = 0
		}, []string{
			`policy.mfa_group_ttl ("0s"): must be positive, e.g. 60s (how long a group's members are cached)`,
			`policy.mfa_groups[0] ("mfa-users"): must be the DN of a group, e.g. "cn=mfa-users,ou=groups,dc=example,dc=test"`,
			`ldap.upstream.url (""): must be set when policy.mfa_groups is set: the groups are read from that directory`,
			`ldap.upstream.service_dn (""): must be set when policy.mfa_groups is set: the service account reads the groups (and ldap.upstream.service_password_file)`}},
		{"ok/postgres-several-hosts", func(c *configs.Config) {
			c.Store.Driver, c.Store.DSN = "postgres", "host=db1,db2 dbname=passgate sslmode=verify-full target_session_attrs=read-write"
		}, nil},
		{"fail/postgres-url-several-hosts", func(c *configs.Config) {
			c.Store.Driver, c.Store.DSN = "postgres", "postgres://u@db1:5432,db2:5432/passgate?target_session_attrs=read-write"
		}, []string{
			`store.dsn ("postgres://u@db1:5432,db2:5432/passgate?target_session_attrs=read-write"): names several hosts in a URL, which lib/pq cannot read: use the key=value form, e.g. "host=db1,db2 port=5432,5432 dbname=passgate target_session_attrs=read-write"`}},
		{"fail/failure-delay", func(c *configs.Config) { c.Policy.FailureDelay = configs.Duration(-time.Second) }, []string{
			`policy.failure_delay ("-1s"): must be zero or positive`}},
		{"fail/audit-retention", func(c *configs.Config) {
			c.Audit = configs.Audit{LoginRetention: configs.Duration(time.Hour), ChangeRetention: 0}
		}, []string{
			`audit.login_retention ("1h0m0s"): must be at least 1d (login events are deleted a day at a time; default 30d)`,
			`audit.change_retention ("0s"): must be at least 1d (default 400d)`}},
		{"fail/upstream-tls", func(c *configs.Config) { c.IMAP.Upstream.TLS = "tls" }, []string{
			`imap.upstream.tls ("tls"): must be none, starttls or implicit`}},
		{"fail/store", func(c *configs.Config) { c.Store.Driver, c.Store.DSN, c.KeyFile = "mysql", "", "" }, []string{
			`store.driver ("mysql"): must be sqlite or postgres`,
			`store.dsn (""): must be set: a file name for sqlite, a postgres:// URL for postgres`,
			`key_file (""): must be set: the server key file (created with mode 0600 when missing on a new store)`}},
		{"fail/postgres-url-redacted", func(c *configs.Config) { c.Store.Driver, c.Store.DSN = "postgres", "mysql://u:hunter2@db/x" }, []string{
			`store.dsn ("mysql://u:xxxxx@db/x"): must be a postgres:// URL or a key=value string such as "host=/run/postgresql dbname=passgate"`}},
		{"fail/policy", func(c *configs.Config) {
			c.Policy.TrustedNetworks = []string{"10.0.0.0/8", "10.0.0.1", "fe80::/200"}
			c.Policy.MaxAppPasswords = 0
			c.Policy.DefaultMFA = "required"
			c.Policy.Limits = configs.ProtocolLimit{MaxLineLength: 100, MaxLiteral: 0}
		}, []string{
			`policy.trusted_networks[1] ("10.0.0.1"): must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (write a single address as 192.0.2.7/32)`,
			`policy.trusted_networks[2] ("fe80::/200"): must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (write a single address as 192.0.2.7/32)`,
			`policy.max_app_passwords (0): must be between 1 and 1000`,
			`policy.default_mfa ("required"): must be disabled, enabled or enforced`,
			`policy.limits.pre_login_timeout ("0s"): must be positive, e.g. 60s`,
			`policy.limits.max_line_length (100): must be between 1024 and 1048576`,
			`policy.limits.max_literal (0): must be between 1 and 1048576`,
			`policy.limits.max_commands (0): must be at least 1`,
			`policy.limits.max_auth_failures (0): must be at least 1`}},
		{"fail/tls", func(c *configs.Config) { c.TLS.MinVersion, c.TLS.CertFile = "1.4", "cert.pem" }, []string{
			`tls.min_version ("1.4"): must be 1.0, 1.1, 1.2 or 1.3`,
			`tls.key_file (""): must be set when tls.cert_file is set`}},
		{"fail/listener-needs-cert", func(c *configs.Config) {
			*c = *imapOn()
			c.TLS.CertFile, c.TLS.KeyFile = "", ""
		}, []string{
			`tls.cert_file (""): must be set: imap.listen offers STARTTLS and needs a certificate (and tls.key_file), or list the clients allowed plaintext logins in policy.trusted_networks`}},
		{"fail/implicit-tls-needs-cert-even-if-trusted", func(c *configs.Config) {
			*c = *imapOn()
			c.TLS.CertFile, c.TLS.KeyFile = "", ""
			c.Policy.TrustedNetworks = []string{"127.0.0.0/8"}
			c.SMTP.ListenTLS = "127.0.0.1:1465"
			c.SMTP.Upstream.Addresses = []string{"127.0.0.1:587"}
		}, []string{
			`tls.cert_file (""): must be set: smtp.listen_tls needs a certificate (and tls.key_file)`}},
		{"fail/addresses", func(c *configs.Config) {
			*c = *imapOn()
			c.IMAP.Listen = "1143"
			c.IMAP.Upstream.Addresses = []string{"127.0.0.1", "dovecot:0", "dovecot:143"}
			c.Web.Listen = "localhost:http-alt"
		}, []string{
			`imap.listen ("1143"): must be host:port such as 127.0.0.1:1143 or [::1]:1143, or empty for off`,
			`web.listen ("localhost:http-alt"): must be host:port such as 127.0.0.1:1143 or [::1]:1143, or empty for off`,
			`imap.upstream.addresses[0] ("127.0.0.1"): must be host:port such as 127.0.0.1:143`,
			`imap.upstream.addresses[1] ("dovecot:0"): must be host:port such as 127.0.0.1:143`}},
		{"fail/imap-master", func(c *configs.Config) {
			*c = *imapOn()
			c.IMAP.Upstream.MasterUser, c.IMAP.Upstream.MasterPasswordFile = "", ""
			c.IMAP.Upstream.MasterStyle, c.IMAP.Upstream.Separator = "separator", ""
			c.IMAP.Upstream.ForwardClient = "xclient"
			c.IMAP.Upstream.DialTimeout = 0
			c.IMAP.Upstream.Addresses = nil
		}, []string{
			`imap.upstream.addresses (""): must list at least one host:port when the listener is on, e.g. [127.0.0.1:143]`,
			`imap.upstream.forward_client ("xclient"): must be id, proxy or none`,
			`imap.upstream.master_user (""): must be set: the Dovecot master user passgate logs in as (imap.upstream.login is master)`,
			`imap.upstream.master_password_file (""): must be set: a file holding the master user's password (imap.upstream.login is master)`,
			`imap.upstream.separator (""): must be Dovecot's auth_master_user_separator, e.g. "*" (no spaces or quotes)`,
			`imap.upstream.dial_timeout ("0s"): must be positive, e.g. 5s`}},
		{"fail/smtp", func(c *configs.Config) {
			c.TLS.CertFile, c.TLS.KeyFile = "c", "k"
			c.SMTP.Listen = "127.0.0.1:1587"
			c.SMTP.Upstream.Addresses = []string{"127.0.0.1:587"}
			c.SMTP.Upstream.Login = "master"
			c.SMTP.Upstream.ForwardClient = "id"
			c.SMTP.MaxRecipients = 0
			c.SMTP.MaxMessageBytes = -1
		}, []string{
			`smtp.upstream.forward_client ("id"): must be xclient, proxy or none`,
			`smtp.upstream.master_user (""): must be set: the submission server's master user passgate logs in as (smtp.upstream.login is master)`,
			`smtp.upstream.master_password_file (""): must be set: a file holding the master user's password (smtp.upstream.login is master)`,
			`smtp.max_message_bytes (-1): must be zero (the upstream's SIZE) or positive`,
			`smtp.max_recipients (0): must be at least 1`}},
		{"fail/ldap", func(c *configs.Config) {
			c.TLS.CertFile, c.TLS.KeyFile = "c", "k"
			c.LDAP.Listen = "127.0.0.1:1389"
			c.LDAP.Mode = "proxy"
			c.LDAP.UserDNTemplates = []string{"uid=%s,dc=example"}
			c.LDAP.Upstream.URL = "ldaps://dir.example.test"
			c.LDAP.Upstream.TLS = "starttls"
			c.LDAP.Upstream.ServiceDN = "cn=passgate"
		}, []string{
			`ldap.mode ("proxy"): must be relay or bind-only`,
			`ldap.user_dn_templates[0] ("uid=%s,dc=example"): must contain {user}, e.g. "uid={user},ou=people,dc=example,dc=test"`,
			`ldap.upstream.tls ("starttls"): must be none with an ldaps:// URL (the connection is TLS already)`,
			`ldap.upstream.service_password_file (""): must be set when ldap.upstream.service_dn is set`}},
		{"fail/ldap-relay-needs-service", func(c *configs.Config) {
			c.TLS.CertFile, c.TLS.KeyFile = "c", "k"
			c.LDAP.ListenTLS = "127.0.0.1:1636"
			c.LDAP.Upstream.URL = "http://dir"
		}, []string{
			`ldap.upstream.url ("http://dir"): must be an ldap:// or ldaps:// URL with a host, e.g. ldap://127.0.0.1:389`,
			`ldap.upstream.service_dn (""): must be set in ldap.mode relay: the service account that binds with proxied authorization (and ldap.upstream.service_password_file)`}},
		{"fail/log", func(c *configs.Config) { c.Log.Level, c.Log.Format = "verbose", "xml" }, []string{
			`log.level ("verbose"): must be debug, info, warn or error`,
			`log.format ("xml"): must be json or text`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := configs.Defaults()
			tc.change(c)
			got := problems(c.Validate())
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Validate:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(c *configs.Config)
		want   []string // prefixes, in order
	}{
		{"defaults", func(c *configs.Config) {}, nil},
		{"imap", func(c *configs.Config) { *c = *imapOn() }, nil},
		{"old-tls", func(c *configs.Config) { c.TLS.MinVersion = "1.0" }, []string{`tls.min_version ("1.0")`}},
		{"cleartext-upstream-loopback-is-fine", func(c *configs.Config) { *c = *imapOn(); c.IMAP.Upstream.TLS = "none" }, nil},
		{"cleartext-upstream-far", func(c *configs.Config) {
			*c = *imapOn()
			c.IMAP.Upstream.TLS = "none"
			c.IMAP.Upstream.Addresses = []string{"127.0.0.1:143", "10.0.8.20:143"}
		}, []string{`imap.upstream.tls ("none"): passwords travel to 10.0.8.20:143 in clear`}},
		{"cleartext-upstream-of-a-listener-that-is-off", func(c *configs.Config) {
			c.IMAP.Upstream.TLS = "none"
			c.IMAP.Upstream.Addresses = []string{"10.0.8.20:143"}
		}, nil},
		{"passthrough", func(c *configs.Config) { *c = *imapOn(); c.IMAP.Upstream.Login = "passthrough" }, []string{
			`imap.upstream.login ("passthrough"): app passwords cannot log in over IMAP`}},
		{"no-certificate-on-loopback-is-a-choice", func(c *configs.Config) {
			*c = *imapOn()
			c.TLS.CertFile, c.TLS.KeyFile = "", ""
		}, nil},
		{"no-certificate", func(c *configs.Config) {
			*c = *imapOn()
			c.IMAP.Listen = "0.0.0.0:1143"
			c.TLS.CertFile, c.TLS.KeyFile = "", ""
			c.LDAP.Listen = "10.0.8.2:1389"
			c.LDAP.Upstream.URL = "ldap://10.0.8.41:389"
			c.LDAP.Upstream.TLS = "none"
		}, []string{
			`imap.listen ("0.0.0.0:1143") without a certificate: STARTTLS is not offered`,
			`ldap.listen ("10.0.8.2:1389") without a certificate`,
			`ldap.upstream.tls ("none") with ldap://10.0.8.41:389: passwords travel to the directory in clear`}},
		{"web", func(c *configs.Config) {
			c.Web.Listen = "127.0.0.1:8080"
			c.IMAP.Upstream.Addresses = []string{"127.0.0.1:143"}
		}, []string{`web.listen ("127.0.0.1:8080") without a certificate: the portal serves plain HTTP`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := configs.Defaults()
			tc.change(c)
			got := c.Warnings()
			ok := len(got) == len(tc.want)
			for i := 0; ok && i < len(got); i++ {
				ok = strings.HasPrefix(got[i], tc.want[i])
			}
			if !ok {
				t.Errorf("Warnings:\n%s\nwant prefixes:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
