package configs_test

import (
	"strings"
	"testing"

	"github.com/passgate/passgate/configs"
)

func TestValidateWeb(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(c *configs.Config)
		want   string // "" means valid
	}{
		{"ok/loopback-http", func(c *configs.Config) {}, ""},
		{"ok/https-anywhere", func(c *configs.Config) {
			c.Web.Listen = "0.0.0.0:443"
			c.TLS.CertFile, c.TLS.KeyFile = "cert.pem", "key.pem"
			c.Web.PublicURL = "https://passgate.example.test"
		}, ""},
		{"fail/plain-http-off-loopback", func(c *configs.Config) { c.Web.Listen = "0.0.0.0:8080" },
			`web.listen ("0.0.0.0:8080"): needs tls.cert_file and tls.key_file`},
		{"fail/public-url-path", func(c *configs.Config) { c.Web.PublicURL = "https://passgate.example.test/portal" },
			`web.public_url ("https://passgate.example.test/portal"): must be the address users type`},
		{"fail/public-url-http", func(c *configs.Config) { c.Web.PublicURL = "http://passgate.example.test" },
			`web.public_url ("http://passgate.example.test"): must be https://`},
		{"fail/verify-unknown", func(c *configs.Config) { c.Web.Verify = "kerberos" }, `web.verify ("kerberos")`},
		{"fail/verify-imap-without-upstream", func(c *configs.Config) { c.IMAP.Upstream.Addresses = nil },
			`web.verify ("imap"): needs imap.upstream.addresses`},
		{"fail/verify-ldap-without-templates", func(c *configs.Config) { c.Web.Verify = "ldap" },
			`web.verify ("ldap"): needs ldap.upstream.url and ldap.user_dn_templates`},
		{"ok/verify-store", func(c *configs.Config) { c.Web.Verify = "store"; c.IMAP.Upstream.Addresses = nil }, ""},
		{"fail/registration-network", func(c *configs.Config) { c.Web.RegistrationNetworks = []string{"10.0.0.0/33"} },
			`web.registration_networks[0] ("10.0.0.0/33"): must be a CIDR`},
		{"fail/absolute-below-idle", func(c *configs.Config) { c.Web.SessionAbsolute = c.Web.SessionIdle / 2 },
			`web.session_absolute ("7m30s"): must be at least web.session_idle`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := configs.Defaults()
			c.Web.Listen = "127.0.0.1:8080"
			c.IMAP.Upstream.Addresses = []string{"127.0.0.1:143"}
			tc.change(c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate = %v, want valid", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}
