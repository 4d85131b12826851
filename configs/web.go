package configs

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
)

// validateWeb checks the web section (the Security info portal).
func validateWeb(c *Config, v *problems) {
	w := c.Web
	for i, n := range w.RegistrationNetworks {
		if _, err := netip.ParsePrefix(n); err != nil {
			v.add(fmt.Sprintf("web.registration_networks[%d]", i), n, "must be a CIDR such as 10.0.0.0/8 (write a single address as 192.0.2.7/32)")
		}
	}
	if w.SessionIdle <= 0 {
		v.add("web.session_idle", w.SessionIdle, "must be positive, e.g. 15m")
	}
	if w.SessionAbsolute < w.SessionIdle {
		v.add("web.session_absolute", w.SessionAbsolute, "must be at least web.session_idle, e.g. 8h")
	}
	if w.PublicURL != "" {
		u, err := url.Parse(w.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			v.add("web.public_url", w.PublicURL, "must be the address users type, an origin such as https://passgate.example.test (no path)")
		} else if u.Scheme == "http" && !loopbackHost(u.Hostname()) {
			v.add("web.public_url", w.PublicURL, "must be https:// unless the host is localhost or a loopback address")
		}
	}
	if w.Listen == "" {
		return
	}
	v.oneOf("web.verify", w.Verify, "imap", "ldap", "store")
	switch w.Verify {
	case "imap":
		if len(c.IMAP.Upstream.Addresses) == 0 {
			v.add("web.verify", w.Verify, "needs imap.upstream.addresses: the portal logs in there with the user's password (or use web.verify: ldap or store)")
		}
	case "ldap":
		if c.LDAP.Upstream.URL == "" || len(c.LDAP.UserDNTemplates) == 0 {
			v.add("web.verify", w.Verify, "needs ldap.upstream.url and ldap.user_dn_templates: the portal binds there as the user (or use web.verify: imap or store)")
		}
	}
	if c.TLS.CertFile == "" {
		if host, _, err := net.SplitHostPort(w.Listen); err == nil && !loopbackHost(host) {
			v.add("web.listen", w.Listen, "needs tls.cert_file and tls.key_file: the portal serves plain HTTP only on a loopback address")
		}
	}
}

// webWarnings returns the advice about the web section.
func webWarnings(c *Config) []string {
	if c.Web.Listen == "" || c.TLS.CertFile != "" {
		return nil
	}
	return []string{fmt.Sprintf("web.listen (%q) without a certificate: the portal serves plain HTTP, which only a browser on this machine should use; set tls.cert_file and tls.key_file", c.Web.Listen)}
}

func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
