package configs_test

import (
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/passgate/passgate/configs"
)

// TestExamplesSingleHost checks that every example configuration describes
// a layout that starts as written on one host: passgate's listeners and
// the upstreams never share a port, the upstreams are on loopback, and the
// Dovecot, Postfix and OpenLDAP snippets move each server to the address
// the examples name.
func TestExamplesSingleHost(t *testing.T) {
	snippet := func(name string) string {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dovecot, postfix, slapd := snippet("dovecot-master-user.conf"), snippet("postfix-xclient.cf"), snippet("slapd-proxyauthz.ldif")
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example files: %v", err)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			c, err := configs.LoadWith(f, func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatal(err)
			}
			listens := map[string]string{}
			for key, addr := range map[string]string{
				"imap.listen": c.IMAP.Listen, "imap.listen_tls": c.IMAP.ListenTLS,
				"smtp.listen": c.SMTP.Listen, "smtp.listen_tls": c.SMTP.ListenTLS,
				"ldap.listen": c.LDAP.Listen, "ldap.listen_tls": c.LDAP.ListenTLS,
				"metrics.listen": c.Metrics.Listen,
			} {
				if addr == "" {
					continue
				}
				_, port, err := net.SplitHostPort(addr)
				if err != nil {
					t.Fatalf("%s %q: %v", key, addr, err)
				}
				if other, dup := listens[port]; dup {
					t.Errorf("%s and %s both listen on port %s", key, other, port)
				}
				listens[port] = key
			}
			type upstream struct{ key, addr, snippetName, snippetText, want string }
			var ups []upstream
			if c.IMAP.Listen != "" || c.IMAP.ListenTLS != "" {
				for _, a := range c.IMAP.Upstream.Addresses {
					_, port, _ := net.SplitHostPort(a)
					ups = append(ups, upstream{"imap.upstream.addresses", a, "dovecot-master-user.conf", dovecot, "port = " + port})
				}
			}
			if c.SMTP.Listen != "" || c.SMTP.ListenTLS != "" {
				for _, a := range c.SMTP.Upstream.Addresses {
					ups = append(ups, upstream{"smtp.upstream.addresses", a, "postfix-xclient.cf", postfix, a + " inet"})
				}
			}
			if c.LDAP.Listen != "" || c.LDAP.ListenTLS != "" {
				u, err := url.Parse(c.LDAP.Upstream.URL)
				if err != nil {
					t.Fatal(err)
				}
				ups = append(ups, upstream{"ldap.upstream.url", u.Host, "slapd-proxyauthz.ldif", slapd, "ldap://" + u.Host + "/"})
			}
			if len(ups) == 0 {
				t.Fatal("no upstream in use")
			}
			for _, u := range ups {
				host, port, err := net.SplitHostPort(u.addr)
				if err != nil {
					t.Fatalf("%s %q: %v", u.key, u.addr, err)
				}
				if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
					t.Errorf("%s %q: not on loopback; on one host the upstream listens on loopback only", u.key, u.addr)
				}
				if key, clash := listens[port]; clash {
					t.Errorf("%s %q: port %s is also passgate's %s: one of them cannot bind", u.key, u.addr, port, key)
				}
				if !strings.Contains(u.snippetText, u.want) {
					t.Errorf("%s %q: %s does not move the server there (no %q)", u.key, u.addr, u.snippetName, u.want)
				}
			}
		})
	}
	if !strings.Contains(dovecot, "address = 127.0.0.1") {
		t.Error("dovecot-master-user.conf: Dovecot's listener is not limited to loopback")
	}
}
