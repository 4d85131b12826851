package configs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/configs"
)

func TestDurationDays(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       time.Duration
		problem    string
	}{
		{"ok/1d", "policy:\n  lockout:\n    window: 1d\n", 24 * time.Hour, ""},
		{"ok/7d", "policy:\n  lockout:\n    window: 7d\n", 7 * 24 * time.Hour, ""},
		{"ok/90d", "policy:\n  lockout:\n    window: 90d\n", 90 * 24 * time.Hour, ""},
		{"ok/hours", "policy:\n  lockout:\n    window: 36h\n", 36 * time.Hour, ""},
		{"fail/negative-days", "policy:\n  lockout:\n    window: -1d\n", 0, `line 3: policy.lockout.window ("-1d"): must be a duration such as 2s, 10m or 7d`},
		{"fail/word", "policy:\n  lockout:\n    window: 1week\n", 0, `line 3: policy.lockout.window ("1week"): must be a duration such as 2s, 10m or 7d`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := configs.Load(write(t, tc.text))
			if tc.problem != "" {
				if err == nil || !strings.Contains(err.Error(), tc.problem) {
					t.Fatalf("err = %v, want %q", err, tc.problem)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Policy.Lockout.Window.D(); got != tc.want {
				t.Errorf("window = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTabIsNamed(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"indent", "imap:\n\tlisten: 127.0.0.1:1143\n", "line 2, column 1: a tab: YAML does not allow tabs for indentation; indent with spaces"},
		{"after-spaces", "imap:\n  upstream:\n  \taddresses: [127.0.0.1:143]\n", "line 3, column 3: a tab"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := configs.Load(write(t, tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRelativePathsBesideTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passgate.yaml")
	text := "store:\n  dsn: state/passgate.db\nkey_file: passgate.key\n" +
		"tls:\n  cert_file: tls/cert.pem\n  key_file: /abs/key.pem\n" +
		"imap:\n  listen: 127.0.0.1:0\n  upstream:\n    addresses: [127.0.0.1:143]\n    master_user: passgate\n    master_password_file: master.secret\n    ca_file: ca.pem\n" +
		"ldap:\n  upstream:\n    url: ldap://127.0.0.1:389\n    service_dn: cn=x\n    service_password_file: ../ldap.secret\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	// Run from elsewhere, as an admin command in a home directory would.
	t.Chdir(t.TempDir())
	c, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ck := range []struct{ key, got, want string }{
		{"store.dsn", c.Store.DSN, filepath.Join(dir, "state/passgate.db")},
		{"key_file", c.KeyFile, filepath.Join(dir, "passgate.key")},
		{"tls.cert_file", c.TLS.CertFile, filepath.Join(dir, "tls/cert.pem")},
		{"tls.key_file", c.TLS.KeyFile, "/abs/key.pem"},
		{"imap.upstream.master_password_file", c.IMAP.Upstream.MasterPasswordFile, filepath.Join(dir, "master.secret")},
		{"imap.upstream.ca_file", c.IMAP.Upstream.CAFile, filepath.Join(dir, "ca.pem")},
		{"ldap.upstream.service_password_file", c.LDAP.Upstream.ServicePasswordFile, filepath.Join(filepath.Dir(dir), "ldap.secret")},
	} {
		if ck.got != ck.want {
			t.Errorf("%s = %q, want %q", ck.key, ck.got, ck.want)
		}
	}
	// A postgres DSN is not a file.
	pg := filepath.Join(dir, "pg.yaml")
	if err := os.WriteFile(pg, []byte("store:\n  driver: postgres\n  dsn: host=/run/postgresql dbname=passgate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = configs.Load(pg)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.DSN != "host=/run/postgresql dbname=passgate" {
		t.Errorf("postgres dsn = %q, changed", c.Store.DSN)
	}
}

// writeCert writes a self-signed certificate and its key into dir.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestCheckFiles(t *testing.T) {
	const secret = "s3cret-Never-Printed"
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	good := filepath.Join(dir, "good.secret")
	empty := filepath.Join(dir, "empty.secret")
	twoLines := filepath.Join(dir, "two.secret")
	for p, text := range map[string]string{good: secret + "\n", empty: "", twoLines: secret + "\n" + secret + "\n"} {
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := func() *configs.Config {
		c := configs.Defaults()
		c.TLS.CertFile, c.TLS.KeyFile = cert, key
		c.IMAP.Listen = "127.0.0.1:0"
		c.IMAP.Upstream.Addresses = []string{"127.0.0.1:143"}
		c.IMAP.Upstream.MasterUser = "passgate"
		c.IMAP.Upstream.MasterPasswordFile = good
		return c
	}
	for _, tc := range []struct {
		name   string
		change func(c *configs.Config)
		want   []string
	}{
		{"ok", func(*configs.Config) {}, nil},
		{"fail/missing-cert", func(c *configs.Config) { c.TLS.CertFile = filepath.Join(dir, "nope.pem") }, []string{"tls.cert_file (\"" + filepath.Join(dir, "nope.pem") + "\"): with tls.key_file", "no such file"}},
		{"fail/key-is-cert", func(c *configs.Config) { c.TLS.KeyFile = cert }, []string{"tls.cert_file", "cannot be loaded"}},
		{"fail/missing-secret", func(c *configs.Config) { c.IMAP.Upstream.MasterPasswordFile = filepath.Join(dir, "gone.secret") }, []string{"imap.upstream.master_password_file", "no such file"}},
		{"fail/empty-secret", func(c *configs.Config) { c.IMAP.Upstream.MasterPasswordFile = empty }, []string{"imap.upstream.master_password_file", "the file is empty"}},
		{"fail/two-lines", func(c *configs.Config) { c.IMAP.Upstream.MasterPasswordFile = twoLines }, []string{"more than one line"}},
		{"fail/missing-ca", func(c *configs.Config) { c.IMAP.Upstream.CAFile = filepath.Join(dir, "ca.pem") }, []string{"imap.upstream.ca_file", "no such file"}},
		{"ok/listener-off", func(c *configs.Config) {
			c.IMAP.Listen = ""
			c.IMAP.Upstream.MasterPasswordFile = empty
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.change(c)
			err := c.CheckFiles()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckFiles = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckFiles = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("CheckFiles = %v, want %q in it", err, w)
				}
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("CheckFiles printed the secret: %v", err)
			}
		})
	}
}
