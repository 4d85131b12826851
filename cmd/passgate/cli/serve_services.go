package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/passgate/passgate/backends/imapupstream"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/proxy/imapfront"
)

// buildServices builds every configured listener with its upstream.
func buildServices(d *deps) ([]service, error) {
	var all []service
	if d.cfg.IMAP.Listen != "" || d.cfg.IMAP.ListenTLS != "" {
		up, err := newIMAPUpstream(d)
		if err != nil {
			return nil, err
		}
		d.onStop = append(d.onStop, func() { up.Close() })
		s, err := buildIMAP(d, IMAPUpstream(up))
		if err != nil {
			return nil, err
		}
		all = append(all, s...)
	}
	if d.cfg.SMTP.Listen != "" || d.cfg.SMTP.ListenTLS != "" {
		up, err := newSMTPUpstream(d)
		if err != nil {
			return nil, err
		}
		s, err := buildSMTP(d, up)
		if err != nil {
			return nil, err
		}
		all = append(all, s...)
	}
	if d.cfg.LDAP.Listen != "" || d.cfg.LDAP.ListenTLS != "" {
		s, err := buildLDAP(d)
		if err != nil {
			return nil, err
		}
		all = append(all, s...)
	}
	return all, nil
}

// upstreamTLS builds the client TLS configuration that verifies an
// upstream's certificate: caFile empty means the system roots.
func upstreamTLS(caKey, caFile, serverName string) (*tls.Config, error) {
	c := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return c, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s (%q): %w", caKey, caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s (%q): no PEM certificate found in the file", caKey, caFile)
	}
	c.RootCAs = pool
	return c, nil
}

// imapReadyConns is how many connections the IMAP listeners keep open
// and greeted ahead of the logins (imapupstream.Options.Ready): a login
// then finds its upstream connection ready, whatever the time its
// decision takes. They follow the logins (a connection taken is
// replaced; one unused for imapupstream.DefaultReadyIdle is closed), so
// an idle instance holds none.
const imapReadyConns = 1

// newIMAPUpstream builds the IMAP listeners' upstream from imap.upstream,
// with d.imapReady ready connections. The caller closes it.
func newIMAPUpstream(d *deps) (*imapupstream.Upstream, error) {
	return imapUpstreamReady(d, d.cfg.IMAP.Upstream.Login, d.imapReady)
}

// imapUpstream builds backends/imapupstream from imap.upstream with the
// given login mode: the IMAP listener's own, or passthrough for the
// portal's verifier, which logs in with the user's password and needs no
// master credentials.
func imapUpstream(d *deps, login string) (*imapupstream.Upstream, error) {
	return imapUpstreamReady(d, login, 0)
}

// imapUpstreamReady is imapUpstream that keeps ready connections open
// (imapupstream.Options.Ready).
func imapUpstreamReady(d *deps, login string, ready int) (*imapupstream.Upstream, error) {
	u := d.cfg.IMAP.Upstream
	tc, err := upstreamTLS("imap.upstream.ca_file", u.CAFile, u.ServerName)
	if err != nil {
		return nil, err
	}
	var masterPW string
	if login == imapupstream.LoginMaster {
		if masterPW, err = configs.ReadSecretFile(u.MasterPasswordFile); err != nil {
			return nil, fmt.Errorf("imap.upstream.master_password_file: %w", err)
		}
	}
	return imapupstream.New(imapupstream.Options{
		Addresses:      u.Addresses,
		TLS:            u.TLS,
		TLSConfig:      tc,
		Login:          login,
		MasterUser:     u.MasterUser,
		MasterPassword: masterPW,
		MasterStyle:    u.MasterStyle,
		Separator:      u.Separator,
		ForwardClient:  u.ForwardClient,
		DialTimeout:    u.DialTimeout.D(),
		Ready:          ready,
		Logger:         d.log,
	})
}

// IMAPUpstream adapts backends/imapupstream to imapfront.Upstream (an
// imapfront.ReadyUpstream: the listener takes a ready connection, or opens
// one, before the decision), so that neither package imports the other: a refused
// login wraps imapfront.ErrUpstreamRefused. serve wires it, and the
// integration tests use it as it is.
func IMAPUpstream(up *imapupstream.Upstream) imapfront.Upstream { return imapAdapter{up} }

// imapAdapter is IMAPUpstream's value.
type imapAdapter struct{ up *imapupstream.Upstream }

var _ imapfront.ReadyUpstream = imapAdapter{}

func (a imapAdapter) Login(ctx context.Context, r imapfront.LoginRequest) (net.Conn, string, error) {
	req := imapupstream.Request{User: r.User, Client: r.Client, ClientID: idPairs(r.ClientID)}
	if r.Primary {
		req.Password = string(r.Password)
	}
	return imapRefused(a.up.Login(ctx, req))
}

func (a imapAdapter) Open(ctx context.Context, client netip.AddrPort, clientID []imapfront.IDField) (imapfront.PendingUpstream, error) {
	p, err := a.up.Open(ctx, client, idPairs(clientID))
	if err != nil {
		return nil, err
	}
	return imapPending{p}, nil
}

// OpenReady hands out one of the upstream's ready connections at once
// (imapfront.ReadyUpstream).
func (a imapAdapter) OpenReady(ctx context.Context, client netip.AddrPort, clientID []imapfront.IDField) (imapfront.PendingUpstream, bool) {
	p, ok := a.up.OpenReady(ctx, client, idPairs(clientID))
	if !ok {
		return nil, false
	}
	return imapPending{p}, true
}

// imapPending adapts imapupstream.Pending to imapfront.PendingUpstream.
type imapPending struct{ p *imapupstream.Pending }

func (p imapPending) Login(ctx context.Context, r imapfront.LoginRequest) (net.Conn, string, error) {
	var password string
	if r.Primary {
		password = string(r.Password)
	}
	return imapRefused(p.p.Login(ctx, r.User, password))
}

func (p imapPending) Close() error { return p.p.Close() }

// idPairs flattens the client's ID fields into key/value pairs.
func idPairs(fields []imapfront.IDField) []string {
	var pairs []string
	for _, f := range fields {
		pairs = append(pairs, f.Name, f.Value)
	}
	return pairs
}

// imapRefused makes a refusal of the upstream wrap
// imapfront.ErrUpstreamRefused.
func imapRefused(conn net.Conn, text string, err error) (net.Conn, string, error) {
	if errors.Is(err, imapupstream.ErrRefused) {
		return nil, "", fmt.Errorf("%w: %w", imapfront.ErrUpstreamRefused, err)
	}
	return conn, text, err
}
