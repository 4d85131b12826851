package configs

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ResolvePaths makes every relative file name of the configuration (the
// SQLite store, key_file, the certificate, CA and secret files) relative to
// dir, the directory of the configuration file, so that a command run from
// another directory reads the same files as the service. LoadWith calls it
// for a file; the embedded defaults stay relative to the working directory.
func (c *Config) ResolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if c.Store.Driver == "sqlite" || c.Store.Driver == "" {
		if rest, ok := strings.CutPrefix(c.Store.DSN, "file:"); ok {
			if rest != "" && !filepath.IsAbs(rest) && !strings.Contains(rest, "?") {
				c.Store.DSN = "file:" + filepath.Join(dir, rest)
			}
		} else {
			abs(&c.Store.DSN)
		}
	}
	for _, p := range []*string{
		&c.KeyFile,
		&c.TLS.CertFile, &c.TLS.KeyFile,
		&c.IMAP.Upstream.CAFile, &c.IMAP.Upstream.MasterPasswordFile,
		&c.SMTP.Upstream.CAFile, &c.SMTP.Upstream.MasterPasswordFile,
		&c.LDAP.Upstream.CAFile, &c.LDAP.Upstream.ServicePasswordFile,
	} {
		abs(p)
	}
}

// CheckFiles reads the files that serve would read at start (the
// certificate and its key, the CA files, the master and service password
// files) and reports every one that is missing, unreadable, empty or
// malformed, one problem per line like Validate. It never includes a
// secret in a message. The server key file is not required: migrate or
// serve creates it on a new store.
func (c *Config) CheckFiles() error {
	var v problems
	if c.TLS.CertFile != "" && c.TLS.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
			v.add("tls.cert_file", c.TLS.CertFile, fmt.Sprintf("with tls.key_file %q: cannot be loaded: %s; point both keys at a readable PEM certificate chain and its private key", c.TLS.KeyFile, fileErr(err)))
		}
	}
	imapOn := c.IMAP.Listen != "" || c.IMAP.ListenTLS != ""
	smtpOn := c.SMTP.Listen != "" || c.SMTP.ListenTLS != ""
	ldapOn := c.LDAP.Listen != "" || c.LDAP.ListenTLS != ""
	for _, f := range []struct {
		key, path string
		on        bool
	}{
		{"imap.upstream.ca_file", c.IMAP.Upstream.CAFile, imapOn},
		{"smtp.upstream.ca_file", c.SMTP.Upstream.CAFile, smtpOn},
		{"ldap.upstream.ca_file", c.LDAP.Upstream.CAFile, ldapOn},
	} {
		if f.on && f.path != "" {
			if _, err := os.ReadFile(f.path); err != nil {
				v.add(f.key, f.path, "cannot be read: "+fileErr(err)+"; point it at the PEM file of the upstream's CA")
			}
		}
	}
	for _, f := range []struct {
		key, path string
		on        bool
	}{
		{"imap.upstream.master_password_file", c.IMAP.Upstream.MasterPasswordFile, imapOn && c.IMAP.Upstream.Login == "master"},
		{"smtp.upstream.master_password_file", c.SMTP.Upstream.MasterPasswordFile, smtpOn && c.SMTP.Upstream.Login == "master"},
		{"ldap.upstream.service_password_file", c.LDAP.Upstream.ServicePasswordFile, ldapOn},
	} {
		if f.on && f.path != "" {
			if _, err := ReadSecretFile(f.path); err != nil {
				v.add(f.key, f.path, secretFileProblem(err))
			}
		}
	}
	return errors.Join(v...)
}

// fileErr shortens an error about a file to what an operator acts on.
func fileErr(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied (the file must be readable by the user passgate runs as)"
	}
	return err.Error()
}

// secretFileProblem describes why ReadSecretFile failed; its errors never
// carry the secret.
func secretFileProblem(err error) string {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return "cannot be read: " + fileErr(err) + "; create it with the password on one line, mode 0600, readable by passgate"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}
