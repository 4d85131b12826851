package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/passgate/passgate/backends/smtpupstream"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// smtpProbeTimeout bounds the start-up probe of the upstream's SIZE.
const smtpProbeTimeout = 5 * time.Second

// buildSMTP makes one service per configured SMTP listener: smtp.listen
// (STARTTLS, service "smtp") and smtp.listen_tls (implicit TLS, service
// "submissions"). It returns no service when neither is set. up logs in
// to the upstream submission server on the user's behalf.
//
// The SIZE advertised is smtp.max_message_bytes when set; otherwise the
// upstream's own SIZE, probed once at start, and 50 MiB when the upstream
// cannot be asked.
func buildSMTP(d *deps, up smtpfront.Upstream) ([]service, error) {
	c := d.cfg.SMTP
	if c.Listen == "" && c.ListenTLS == "" {
		return nil, nil
	}
	if up == nil || d.engine == nil {
		return nil, errors.New("cli: build smtp listeners: missing upstream or decision engine (a wiring bug in serve)")
	}
	if c.ListenTLS != "" && d.serverTLS == nil {
		return nil, fmt.Errorf("cli: smtp.listen_tls (%q) needs a certificate: set tls.cert_file and tls.key_file in the configuration, or remove smtp.listen_tls", c.ListenTLS)
	}
	size := c.MaxMessageBytes
	if size <= 0 {
		size = smtpfront.DefaultMaxMessageBytes
		if p, ok := up.(sizeProber); ok {
			ctx, cancel := context.WithTimeout(context.Background(), smtpProbeTimeout)
			n, known, err := p.ProbeSize(ctx)
			cancel()
			switch {
			case err != nil:
				d.log.Warn("could not read the SMTP upstream's SIZE; advertising the default (set smtp.max_message_bytes to choose)",
					slog.Int64("size", size), slog.Any("err", err))
			case known && n > 0:
				size = n
			}
		}
	}
	lim := d.cfg.Policy.Limits
	base := smtpfront.Options{
		Decider:         d.engine,
		Upstream:        up,
		Hostname:        c.Hostname,
		MaxMessageBytes: size,
		MaxRecipients:   c.MaxRecipients,
		MaxLineLength:   lim.MaxLineLength,
		MaxCommands:     lim.MaxCommands,
		MaxAuthFailures: lim.MaxAuthFailures,
		PreLoginTimeout: lim.PreLoginTimeout.D(),
	}
	if d.relays != nil {
		base.Sessions = d.relays
	}
	base.LegacyAuthLine = c.LegacyAuthLine
	var out []service
	if c.Listen != "" {
		o := base
		o.TLSConfig = d.serverTLS // nil: no STARTTLS
		o.Listener = "smtp"
		o.Conns = d.metrics.conns("smtp")
		o.Logger = d.log
		out = append(out, frontService("smtp", c.Listen, smtpfront.New(o)))
	}
	if c.ListenTLS != "" {
		o := base
		o.TLSConfig = d.serverTLS
		o.ImplicitTLS = true
		o.Listener = "submissions"
		o.Conns = d.metrics.conns("submissions")
		o.Logger = d.log
		out = append(out, frontService("submissions", c.ListenTLS, smtpfront.New(o)))
	}
	return out, nil
}

// sizeProber is what buildSMTP asks of an upstream that can tell its SIZE.
type sizeProber interface {
	ProbeSize(ctx context.Context) (size int64, known bool, err error)
}

// smtpReadyConns is how many connections the SMTP listeners keep open,
// greeted and past STARTTLS and EHLO ahead of the logins
// (smtpupstream.Options.Ready): a login takes one instead of opening its
// own, so the upstream's connect and TLS handshake are off its path. It
// carries no client's data until the login's XCLIENT or AUTH.
const smtpReadyConns = 1

// newSMTPUpstream builds the SMTP upstream from smtp.upstream, with
// d.smtpReady ready connections, which close with the listeners
// (d.onStop).
func newSMTPUpstream(d *deps) (smtpfront.Upstream, error) {
	u := d.cfg.SMTP.Upstream
	tc, err := upstreamTLS("smtp.upstream.ca_file", u.CAFile, u.ServerName)
	if err != nil {
		return nil, err
	}
	var masterPW string
	if u.Login == smtpupstream.LoginMaster {
		if masterPW, err = configs.ReadSecretFile(u.MasterPasswordFile); err != nil {
			return nil, fmt.Errorf("smtp.upstream.master_password_file: %w", err)
		}
	}
	up, err := smtpupstream.New(smtpupstream.Options{
		Addresses:      u.Addresses,
		TLS:            u.TLS,
		TLSConfig:      tc,
		Login:          u.Login,
		MasterUser:     u.MasterUser,
		MasterPassword: smtpupstream.Password(masterPW),
		ForwardClient:  u.ForwardClient,
		DialTimeout:    u.DialTimeout.D(),
		Ready:          d.smtpReady,
	})
	if err != nil {
		return nil, err
	}
	d.onStop = append(d.onStop, func() { up.Close() })
	return SMTPUpstream(up), nil
}

// SMTPUpstream adapts backends/smtpupstream to smtpfront.Upstream, so
// that neither package imports the other: a refused login wraps
// smtpfront.ErrLoginRefused. serve wires it, and the integration tests
// use it as it is.
func SMTPUpstream(up *smtpupstream.Client) smtpfront.Upstream { return smtpAdapter{up} }

// smtpAdapter is SMTPUpstream's value.
type smtpAdapter struct{ up *smtpupstream.Client }

func (a smtpAdapter) Dial(ctx context.Context, client netip.AddrPort) (smtpfront.PendingLogin, error) {
	p, err := a.up.Dial(ctx, client)
	if err != nil {
		return nil, err
	}
	return smtpPending{p}, nil
}

// smtpPending adapts smtpupstream.Pending to smtpfront.PendingLogin.
type smtpPending struct{ p *smtpupstream.Pending }

func (p smtpPending) Login(ctx context.Context, r smtpfront.LoginRequest) (smtpfront.UpstreamSession, error) {
	s, err := p.p.Login(ctx, r.User, smtpupstream.Password(r.Password), r.Helo)
	if errors.Is(err, smtpupstream.ErrAuthRefused) || errors.Is(err, smtpupstream.ErrNoPassword) {
		// ErrNoPassword: an app password in passthrough mode, which the
		// upstream cannot check; the client gets the uniform failure.
		return nil, fmt.Errorf("%w: %w", smtpfront.ErrLoginRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (p smtpPending) Close() error { return p.p.Close() }

func (a smtpAdapter) ProbeSize(ctx context.Context) (int64, bool, error) {
	return a.up.ProbeSize(ctx)
}

var _ smtpfront.UpstreamSession = (*smtpupstream.Session)(nil)
