package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/backends/verify"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/account"
	"github.com/passgate/passgate/proxy/portal"
)

// staleSessionSweep is how often expired portal sessions are deleted from
// the store (they are refused on use anyway).
const staleSessionSweep = 10 * time.Minute

// webPublicURL returns web.public_url, or its default: the listen address
// with localhost for a loopback host, https with a certificate, http
// without.
func webPublicURL(cfg *configs.Config, bound string) (*url.URL, error) {
	if cfg.Web.PublicURL != "" {
		u, err := url.Parse(cfg.Web.PublicURL)
		if err != nil {
			return nil, fmt.Errorf("web.public_url (%q): %w", cfg.Web.PublicURL, err)
		}
		return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return nil, fmt.Errorf("web.listen (%q): %w", bound, err)
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && (ip.IsLoopback() || ip.IsUnspecified())) {
		host = "localhost"
	}
	scheme := "https"
	if cfg.TLS.CertFile == "" {
		scheme = "http"
	}
	return &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port)}, nil
}

// newVerifier builds the primary-password verifier of web.verify.
func newVerifier(d *deps, st *store.Store) (verify.Verifier, error) {
	switch d.cfg.Web.Verify {
	case "ldap":
		u := d.cfg.LDAP.Upstream
		tc, err := upstreamTLS("ldap.upstream.ca_file", u.CAFile, u.ServerName)
		if err != nil {
			return nil, err
		}
		return &verify.LDAP{URL: u.URL, StartTLS: u.TLS == "starttls", TLSConfig: tc, Templates: d.cfg.LDAP.UserDNTemplates}, nil
	case "store":
		return verify.NewHashes(hashSource{st})
	default:
		u := d.cfg.IMAP.Upstream
		tc, err := upstreamTLS("imap.upstream.ca_file", u.CAFile, u.ServerName)
		if err != nil {
			return nil, err
		}
		return &verify.IMAP{Addresses: u.Addresses, TLS: u.TLS, TLSConfig: tc, DialTimeout: u.DialTimeout.D()}, nil
	}
}

// hashSource adapts the store to verify.HashSource.
type hashSource struct{ st *store.Store }

func (h hashSource) PasswordHash(ctx context.Context, user string) (string, bool, error) {
	hash, err := h.st.PasswordHash(ctx, user)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrInvalid) {
		return "", false, nil
	}
	return hash, err == nil, err
}

// buildWeb builds the Security info portal on web.listen.
func buildWeb(d *deps, st *store.Store, audit policy.Store) (service, error) {
	cfg := d.cfg
	pub, err := webPublicURL(cfg, cfg.Web.Listen)
	if err != nil {
		return service{}, err
	}
	regNets, err := parsePrefixes("web.registration_networks", cfg.Web.RegistrationNetworks)
	if err != nil {
		return service{}, err
	}
	v, err := newVerifier(d, st)
	if err != nil {
		return service{}, err
	}
	accounts := account.New(account.Options{Store: st, Issuer: "passgate " + pub.Hostname()})
	p, err := portal.New(portal.Options{
		PublicURL:            pub,
		SignIn:               &webSignIn{engine: d.engine, verifier: v, st: st, audit: audit, log: d.log},
		Accounts:             accounts,
		Sessions:             st,
		RegistrationNetworks: regNets,
		SessionIdle:          cfg.Web.SessionIdle.D(),
		SessionAbsolute:      cfg.Web.SessionAbsolute.D(),
		Logger:               d.log.With(slog.String("listener", "web")),
	})
	if err != nil {
		return service{}, err
	}
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		TLSConfig:         d.serverTLS,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	var sweeps sync.WaitGroup
	stop := func() { stopSweep(); sweeps.Wait() }
	return service{
		name: "web",
		addr: cfg.Web.Listen,
		serve: func(ln net.Listener) error {
			sweeps.Go(func() { sweepSessions(sweepCtx, st, cfg, d.log) })
			var err error
			if d.serverTLS != nil {
				err = srv.ServeTLS(ln, "", "")
			} else {
				d.log.Warn("the portal serves plain HTTP on "+ln.Addr().String()+": only a browser on this machine can use it safely; set tls.cert_file to serve HTTPS",
					slog.String("listener", "web"))
				err = srv.Serve(ln)
			}
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return err
		},
		shutdown: func(ctx context.Context) error { defer stop(); return srv.Shutdown(ctx) },
		close:    func() error { defer stop(); return srv.Close() },
	}, nil
}

func sweepSessions(ctx context.Context, st *store.Store, cfg *configs.Config, log *slog.Logger) {
	t := time.NewTicker(staleSessionSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if _, err := st.DeleteStaleWebSessions(ctx, now.Add(-cfg.Web.SessionIdle.D()), now.Add(-cfg.Web.SessionAbsolute.D())); err != nil && ctx.Err() == nil {
				log.Warn("delete expired portal sessions", slog.Any("err", err))
			}
		}
	}
}

// webSignIn decides portal sign-ins. Until policy decides proto web itself
// (Decide/Finish), it runs the TLS step of the decision, refuses disabled
// users, verifies the password, audits every outcome and waits out the
// failure delay on every failure.
type webSignIn struct {
	engine   *policy.Engine
	verifier verify.Verifier
	st       *store.Store
	audit    policy.Store
	log      *slog.Logger
}

var _ portal.SignIn = (*webSignIn)(nil)

func (w *webSignIn) record(ctx context.Context, a portal.Attempt, step, outcome, reason string) {
	detail := "credential=" + step + " tls=" + fmt.Sprint(a.TLS) + " reason=" + reason
	if a.ClientName != "" {
		detail += " client=" + strings.ToValidUTF8(a.ClientName, "?")
	}
	ev := store.AuditEvent{Time: time.Now(), Actor: "web:" + a.Client.String(), Action: "login", Subject: a.User, Outcome: outcome, Detail: detail}
	if err := w.audit.Record(context.WithoutCancel(ctx), ev); err != nil {
		w.log.Error("audit write failed", slog.Any("err", err))
	}
	w.log.LogAttrs(ctx, slog.LevelInfo, "auth decision", slog.String("proto", "web"), slog.String("user", a.User),
		slog.String("remote_addr", a.Client.String()), slog.String("decision", outcome), slog.String("reason", reason))
}

func (w *webSignIn) refuse(ctx context.Context, a portal.Attempt, step, reason string) error {
	w.record(ctx, a, step, "failure", reason)
	w.engine.Fail(ctx, policy.Attempt{Proto: "web", User: a.User, Client: a.Client, Started: a.Started})
	return portal.ErrRefused
}

func (w *webSignIn) unavailable(ctx context.Context, a portal.Attempt, step string, err error) error {
	w.record(ctx, a, step, "unavailable", "temporary failure: "+err.Error())
	w.engine.Fail(ctx, policy.Attempt{Proto: "web", User: a.User, Client: a.Client, Started: a.Started})
	return err
}

// Password implements portal.SignIn.
func (w *webSignIn) Password(ctx context.Context, a portal.Attempt) (portal.Account, error) {
	if !w.engine.PlaintextAllowed(a.Client, a.TLS) {
		return portal.Account{}, w.refuse(ctx, a, "primary", "plaintext credentials without TLS from an untrusted network")
	}
	if a.User == "" || a.Password == "" {
		return portal.Account{}, w.refuse(ctx, a, "primary", "empty user name or password")
	}
	mfa, err := w.st.UserMFA(ctx, a.User)
	if errors.Is(err, store.ErrInvalid) {
		return portal.Account{}, w.refuse(ctx, a, "primary", "user name is not valid")
	}
	if err != nil {
		return portal.Account{}, w.unavailable(ctx, a, "primary", err)
	}
	if mfa == store.MFADisabled {
		return portal.Account{}, w.refuse(ctx, a, "primary", "MFA is disabled for the user: nothing to manage in the portal")
	}
	err = w.verifier.Verify(ctx, a.User, a.Password)
	if errors.Is(err, verify.ErrRefused) {
		return portal.Account{}, w.refuse(ctx, a, "primary", "primary password refused by the verifier")
	}
	if err != nil {
		return portal.Account{}, w.unavailable(ctx, a, "primary", err)
	}
	name := a.User
	if u, err := w.st.GetUser(ctx, a.User); err == nil {
		name = u.Name
	}
	w.record(ctx, a, "primary", "success", "primary password accepted; second factor next")
	return portal.Account{User: name, MFA: string(mfa)}, nil
}

// SecondFactor implements portal.SignIn.
func (w *webSignIn) SecondFactor(ctx context.Context, a portal.Attempt, check func(ctx context.Context) (bool, error)) error {
	if !w.engine.PlaintextAllowed(a.Client, a.TLS) {
		return w.refuse(ctx, a, "second-factor", "plaintext credentials without TLS from an untrusted network")
	}
	ok, err := check(ctx)
	if err != nil {
		return w.unavailable(ctx, a, "second-factor", err)
	}
	if !ok {
		return w.refuse(ctx, a, "second-factor", "second factor refused")
	}
	w.record(ctx, a, "second-factor", "success", "second factor accepted")
	return nil
}
