// Package ldapupstream logs in to the real directory (OpenLDAP, Active
// Directory) on behalf of passgate's LDAP listener.
//
// On the path of a login it comes after the decision: proxy/ldapfront has
// read a bind and policy has allowed it. For an account without MFA the
// directory checks the password itself (a bind with the client's own DN);
// after an app-password bind, passgate binds as its service account and
// relays the client's searches and compares with the RFC 4370 proxied
// authorization control naming the user, so the directory's ACLs apply as
// if the user had bound. It imports no other passgate package.
//
// Two tools are used:
//
//   - github.com/go-ldap/ldap/v3 for the short checks: Resolve (a
//     base-scope search, on a connection bound as the service account
//     and kept open between lookups, that tells the listener which
//     entry a bind name stands for, before any user password is sent),
//     Verify (a user bind
//     and WhoAmI on a connection of its own, bind-only mode), Check (the
//     service bind and WhoAmI at start-up) and WhoAmIAs (the service bind and
//     WhoAmI with the proxied authorization control: proves that the
//     directory lets the service account act for a user). The proxied
//     authorization control is encoded with go-ldap's NewControlString.
//   - Session, a small LDAP client of its own on github.com/go-asn1-ber/asn1-ber,
//     for the relay: go-ldap has no call that sends an already-encoded
//     request or returns a response undecoded, and re-encoding searches and
//     their results through go-ldap's types would lose or reorder what the
//     client and the directory said (controls, paged-results cookies,
//     referrals, matched DNs). A Session carries one client connection's
//     operations with message IDs of its own and hands every response back
//     as raw BER. Its per-request path allocates nothing: a request is
//     encoded with its proxied authorization control (the same bytes as
//     NewControlString's, but for TRUE written as 0xFF, as RFC 4511 §5.1
//     says) into a buffer the session keeps, a response is handed over
//     from the reader's buffer, and the reader tells the listener when it
//     is about to wait (OnIdle), so that answers read together go out in
//     one write. Write deadlines move at most once per writeTimeout.
//
// The service password is a Secret, which prints as REDACTED.
//
// TLS to the directory is none, StartTLS, or implicit (ldaps:// URLs), with
// the certificate verified against CAFile (or the system's roots) and
// ServerName (or the URL's host).
package ldapupstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/secret"
)

// TLS modes of Options.TLS.
const (
	TLSNone     = "none"
	TLSStartTLS = "starttls"
)

// OIDProxiedAuthz is the RFC 4370 proxied authorization control;
// oidProxiedAuthzV1 is its draft predecessor, which slapd still honours.
const (
	OIDProxiedAuthz   = "2.16.840.1.113730.3.4.18"
	oidProxiedAuthzV1 = "2.16.840.1.113730.3.4.12"
	oidStartTLS       = "1.3.6.1.4.1.1466.20037"
	oidWhoAmI         = "1.3.6.1.4.1.4203.1.11.3"
)

// Defaults of Options.
const (
	DefaultDialTimeout     = 5 * time.Second
	DefaultMaxMessageBytes = 16 << 20
)

// Options configures a Client.
type Options struct {
	URL             string // ldap://host:port or ldaps://host:port
	TLS             string // none | starttls (ldap:// URLs only)
	CAFile          string // PEM roots to verify the directory; empty: the system's
	ServerName      string // name checked in the certificate; default: the URL's host
	ServiceDN       string
	ServicePassword Secret        // prints as REDACTED
	DialTimeout     time.Duration // default 5s
	MaxMessageBytes int           // largest message accepted from the directory; default 16 MiB
}

// Client dials the directory. It is safe for concurrent use. Close it to
// close the connection Resolve keeps.
type Client struct {
	opts     Options
	addr     string
	implicit bool
	tlsConf  *tls.Config // nil when TLS is none

	kept keptConn // the service account's connection for Resolve
}

// keptConn is the service account's go-ldap connection that Resolve
// shares between all lookups (go-ldap multiplexes requests on it).
type keptConn struct {
	dialing chan struct{} // one slot: one dial at a time, waited for with ctx

	mu       sync.Mutex // guards the fields below; never held over I/O
	conn     *ldap.Conn
	lastUsed time.Time
	closed   bool
}

// Bounds of the kept connection: one lookup waits at most
// keptRequestTimeout for its answer, and a connection idle for longer
// than keptMaxIdle is replaced rather than trusted (a firewall may have
// dropped it without a word, and a search on it would wait the timeout
// out).
const (
	keptRequestTimeout = 10 * time.Second
	keptMaxIdle        = 60 * time.Second
)

// Secret is a password passgate holds for the directory (the service
// account's): backends/secret's one redacting type.
type Secret = secret.Secret

// constError is an error that can be a constant, so that sentinel errors
// are not package-level variables.
type constError string

func (e constError) Error() string { return string(e) }

// errOwnProxyAuthz: the client sent its own proxied authorization control.
const errOwnProxyAuthz = constError("ldapupstream: the request already carries a proxied authorization control")

// errClientClosed: Resolve after Close.
const errClientClosed = constError("ldapupstream: client closed")

// errNoServiceAccount: an operation needs the service account and none is
// configured.
const errNoServiceAccount = constError("ldapupstream: no service account: set ldap.upstream.service_dn and ldap.upstream.service_password_file")

// New checks opts and loads the CA file. It does not dial.
func New(opts Options) (*Client, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || u.Host == "" || (u.Scheme != "ldap" && u.Scheme != "ldaps") {
		return nil, fmt.Errorf("ldapupstream: url %q: must be ldap://host:port or ldaps://host:port (ldap.upstream.url)", opts.URL)
	}
	c := &Client{opts: opts, implicit: u.Scheme == "ldaps"}
	c.kept.dialing = make(chan struct{}, 1)
	if opts.TLS == "" {
		c.opts.TLS = TLSNone
	}
	if c.opts.TLS != TLSNone && c.opts.TLS != TLSStartTLS {
		return nil, fmt.Errorf("ldapupstream: tls %q: must be none or starttls (ldap.upstream.tls)", opts.TLS)
	}
	if c.implicit && c.opts.TLS == TLSStartTLS {
		return nil, fmt.Errorf("ldapupstream: tls starttls with an ldaps:// URL: the connection is TLS already; set ldap.upstream.tls to none")
	}
	port := u.Port()
	if port == "" {
		port = "389"
		if c.implicit {
			port = "636"
		}
	}
	c.addr = net.JoinHostPort(u.Hostname(), port)
	if c.opts.DialTimeout <= 0 {
		c.opts.DialTimeout = DefaultDialTimeout
	}
	if c.opts.MaxMessageBytes <= 0 {
		c.opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.implicit || c.opts.TLS == TLSStartTLS {
		conf := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: opts.ServerName}
		if conf.ServerName == "" {
			conf.ServerName = u.Hostname()
		}
		if opts.CAFile != "" {
			pem, err := os.ReadFile(opts.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ldapupstream: read CA file (ldap.upstream.ca_file): %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ldapupstream: CA file %s (ldap.upstream.ca_file) holds no PEM certificate", opts.CAFile)
			}
			conf.RootCAs = pool
		}
		c.tlsConf = conf
	}
	return c, nil
}

// Addr is the directory's host:port, for logs.
func (c *Client) Addr() string { return c.addr }

// refused reports whether a result code means "these credentials are not
// accepted" rather than "the directory could not answer".
func refused(code uint16) bool {
	switch code {
	case ldap.LDAPResultSuccess, ldap.LDAPResultOperationsError, ldap.LDAPResultProtocolError,
		ldap.LDAPResultBusy, ldap.LDAPResultUnavailable, ldap.LDAPResultOther:
		return false
	}
	return code < ldap.LDAPResultOther
}

// dialLDAP opens a go-ldap connection with the configured TLS. It is
// closed when ctx ends.
func (c *Client) dialLDAP(ctx context.Context) (*ldap.Conn, func(), error) {
	l, stop, err := c.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return l, func() { stop(); l.Close() }, nil
}

// dial opens a go-ldap connection with the configured TLS; it is closed
// if ctx ends before stop is called.
func (c *Client) dial(ctx context.Context) (*ldap.Conn, func() bool, error) {
	d := &net.Dialer{Timeout: c.opts.DialTimeout}
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	opts := []ldap.DialOpt{ldap.DialWithDialer(d)}
	if c.tlsConf != nil {
		opts = append(opts, ldap.DialWithTLSConfig(c.tlsConf.Clone()))
	}
	l, err := ldap.DialURL(c.opts.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("ldapupstream: dial %s: %w (ldap.upstream.url; is the directory up?)", c.addr, err)
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	if dl, ok := ctx.Deadline(); ok {
		l.SetTimeout(time.Until(dl))
	}
	if c.opts.TLS == TLSStartTLS {
		if err := l.StartTLS(c.tlsConf.Clone()); err != nil {
			stop()
			l.Close()
			return nil, nil, fmt.Errorf("ldapupstream: StartTLS with %s: %w (ldap.upstream.tls, ldap.upstream.ca_file)", c.addr, err)
		}
	}
	return l, stop, nil
}

// Verify binds as dn with password on a connection of its own, asks WhoAmI
// and closes. ok is false when the directory refused the credentials; err
// is set when the directory could not be asked.
func (c *Client) Verify(ctx context.Context, dn string, password []byte) (authzID string, ok bool, err error) {
	l, done, err := c.dialLDAP(ctx)
	if err != nil {
		return "", false, err
	}
	defer done()
	if err := l.Bind(dn, string(password)); err != nil {
		var le *ldap.Error
		if errors.As(err, &le) && refused(le.ResultCode) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("ldapupstream: bind at %s: %w", c.addr, err)
	}
	r, err := l.WhoAmI(nil)
	if err != nil {
		return "", true, fmt.Errorf("ldapupstream: WhoAmI at %s: %w", c.addr, err)
	}
	return r.AuthzID, true, nil
}

// Check binds as the service account and asks WhoAmI: cmd runs it at
// start-up so that a wrong service DN, password or CA shows at once.
func (c *Client) Check(ctx context.Context) (string, error) {
	return c.WhoAmIAs(ctx, "")
}

// WhoAmIAs binds as the service account and asks WhoAmI with the proxied
// authorization control naming authzID ("dn:…"; empty: no control). The
// answer is the identity the directory applies its ACLs to; slapd answers
// 123 when the service account may not act for that user (authzTo).
func (c *Client) WhoAmIAs(ctx context.Context, authzID string) (string, error) {
	if c.opts.ServiceDN == "" {
		return "", errNoServiceAccount
	}
	l, done, err := c.dialLDAP(ctx)
	if err != nil {
		return "", err
	}
	defer done()
	if err := l.Bind(c.opts.ServiceDN, string(c.opts.ServicePassword)); err != nil {
		return "", fmt.Errorf("ldapupstream: service bind as %q at %s: %w (ldap.upstream.service_dn, ldap.upstream.service_password_file)", c.opts.ServiceDN, c.addr, err)
	}
	var ctls []ldap.Control
	if authzID != "" {
		ctls = append(ctls, ldap.NewControlString(OIDProxiedAuthz, true, authzID))
	}
	r, err := l.WhoAmI(ctls)
	if err != nil {
		return "", fmt.Errorf("ldapupstream: WhoAmI at %s: %w (for proxied authorization the service account needs authzTo and the directory authz-policy to)", c.addr, err)
	}
	return r.AuthzID, nil
}

// HasServiceAccount reports whether a service account is configured, which
// Resolve needs.
func (c *Client) HasServiceAccount() bool { return c.opts.ServiceDN != "" }

// resolveTimeLimit is the server-side time limit of Resolve's search, in
// seconds.
const resolveTimeLimit = 10

// Resolve looks dn up as the service account with a base-scope search that
// asks for no attributes ("1.1") and does not follow aliases, and returns
// the entry's DN as the directory spells it. found is false when the
// directory has no such entry (or the name is not a valid DN); err is set
// when the directory could not be asked. The listener calls it before a
// user's password is sent anywhere, so that another spelling of a person's
// DN (an alias attribute type, an OID, fullwidth letters) is decided for
// the person.
//
// The lookups share one connection bound as the service account, kept
// open between them: an application that binds with its own account for
// every page it serves then costs the directory a search, not a
// connection, a bind and a search. A lookup that finds the kept
// connection lost is tried once more on a new one.
func (c *Client) Resolve(ctx context.Context, dn string) (entryDN string, found bool, err error) {
	if c.opts.ServiceDN == "" {
		return "", false, errNoServiceAccount
	}
	for attempt := 0; ; attempt++ {
		l, err := c.keptConn(ctx)
		if err != nil {
			return "", false, err
		}
		entryDN, found, err = c.lookup(l, dn)
		if err != nil && !directoryAnswered(err) && ctx.Err() == nil {
			c.dropKept(l)
			if attempt == 0 {
				continue
			}
		}
		return entryDN, found, err
	}
}

// directoryAnswered reports whether err is a result the directory sent
// (an LDAP result code), as opposed to a lost or broken connection, after
// which the kept connection is not to be used again.
func directoryAnswered(err error) bool {
	var le *ldap.Error
	return errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork
}

// lookup runs Resolve's search on l. It uses go-ldap's Search, not
// SearchAsync: SearchAsync ends a search whose connection was lost
// without an error, which would read as "no such entry". The search is
// bounded by keptRequestTimeout instead of ctx.
func (c *Client) lookup(l *ldap.Conn, dn string) (string, bool, error) {
	req := ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 2, resolveTimeLimit, false,
		"(objectClass=*)", []string{"1.1"}, nil)
	r, err := l.Search(req)
	if err != nil {
		if ldap.IsErrorAnyOf(err, ldap.LDAPResultNoSuchObject, ldap.LDAPResultInvalidDNSyntax) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("ldapupstream: resolve %q at %s: %w (the service account must be able to read the entries of ldap.user_dn_templates)", dn, c.addr, err)
	}
	if len(r.Entries) != 1 || r.Entries[0].DN == "" {
		return "", false, nil
	}
	return r.Entries[0].DN, true, nil
}

// keptConn returns the service account's kept connection, dialling and
// binding a new one when there is none, it was lost, or it sat idle for
// longer than keptMaxIdle. One caller dials at a time; the others wait
// for it, each no longer than its ctx allows.
func (c *Client) keptConn(ctx context.Context) (*ldap.Conn, error) {
	if l, err := c.usableKept(); l != nil || err != nil {
		return l, err
	}
	select {
	case c.kept.dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("ldapupstream: resolve: wait for the connection to %s: %w", c.addr, context.Cause(ctx))
	}
	defer func() { <-c.kept.dialing }()
	// Another caller may have dialled while this one waited.
	if l, err := c.usableKept(); l != nil || err != nil {
		return l, err
	}
	l, stop, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.Bind(c.opts.ServiceDN, string(c.opts.ServicePassword)); err != nil {
		stop()
		l.Close()
		return nil, fmt.Errorf("ldapupstream: resolve: service bind as %q at %s: %w (ldap.upstream.service_dn, ldap.upstream.service_password_file)", c.opts.ServiceDN, c.addr, err)
	}
	if !stop() {
		// ctx ended meanwhile and closed it.
		return nil, fmt.Errorf("ldapupstream: resolve: connect to %s: %w", c.addr, context.Cause(ctx))
	}
	l.SetTimeout(keptRequestTimeout)
	k := &c.kept
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		l.Close()
		return nil, errClientClosed
	}
	k.conn, k.lastUsed = l, time.Now()
	return l, nil
}

// usableKept returns the kept connection if it can be used, nil if a new
// one must be dialled (closing a lost or stale one), or an error after
// Close.
func (c *Client) usableKept() (*ldap.Conn, error) {
	k := &c.kept
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, errClientClosed
	}
	if k.conn != nil && (k.conn.IsClosing() || time.Since(k.lastUsed) > keptMaxIdle) {
		k.conn.Close()
		k.conn = nil
	}
	if k.conn == nil {
		return nil, nil
	}
	k.lastUsed = time.Now()
	return k.conn, nil
}

// dropKept closes l if it is still the kept connection.
func (c *Client) dropKept(l *ldap.Conn) {
	k := &c.kept
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.conn == l {
		k.conn = nil
	}
	l.Close()
}

// Close closes the connection that Resolve keeps; Resolve fails after it.
// It does not wait for a dial in progress (whose connection is then
// closed at once). Sessions opened with Open are closed by their own
// Close.
func (c *Client) Close() error {
	k := &c.kept
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	if k.conn != nil {
		k.conn.Close()
		k.conn = nil
	}
	return nil
}
