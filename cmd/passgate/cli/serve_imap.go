package cli

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/passgate/passgate/proxy/imapfront"
)

// buildIMAP makes one service per configured IMAP listener: imap.listen
// (STARTTLS) and imap.listen_tls (implicit TLS). It returns no service when
// neither is set. up logs in to the upstream IMAP server on the user's
// behalf.
func buildIMAP(d *deps, up imapfront.Upstream) ([]service, error) {
	c := d.cfg.IMAP
	if c.Listen == "" && c.ListenTLS == "" {
		return nil, nil
	}
	if up == nil || d.engine == nil || d.relays == nil {
		return nil, errors.New("cli: build imap listeners: missing upstream, decision engine or relay registry (a wiring bug in serve)")
	}
	if c.ListenTLS != "" && d.serverTLS == nil {
		return nil, fmt.Errorf("cli: imap.listen_tls (%q) needs a certificate: set tls.cert_file and tls.key_file in the configuration, or remove imap.listen_tls", c.ListenTLS)
	}
	lim := d.cfg.Policy.Limits
	base := imapfront.Options{
		Decider:         d.engine,
		Upstream:        up,
		Relays:          d.relays,
		MaxLineLength:   lim.MaxLineLength,
		MaxLiteral:      lim.MaxLiteral,
		MaxCommands:     lim.MaxCommands,
		MaxAuthFailures: lim.MaxAuthFailures,
		PreLoginTimeout: lim.PreLoginTimeout.D(),
	}
	var out []service
	if c.Listen != "" {
		o := base
		o.TLSConfig = d.serverTLS // nil: no STARTTLS
		o.Logger = d.log.With(slog.String("listener", "imap"))
		o.Conns = d.metrics.conns("imap")
		srv := imapfront.New(o)
		d.metrics.parked("imap", srv.Parked, srv.ParkFailures)
		out = append(out, frontService("imap", c.Listen, srv))
	}
	if c.ListenTLS != "" {
		o := base
		o.TLSConfig = d.serverTLS
		o.ImplicitTLS = true
		o.Logger = d.log.With(slog.String("listener", "imaps"))
		o.Conns = d.metrics.conns("imaps")
		srv := imapfront.New(o)
		d.metrics.parked("imaps", srv.Parked, srv.ParkFailures)
		out = append(out, frontService("imaps", c.ListenTLS, srv))
	}
	return out, nil
}
