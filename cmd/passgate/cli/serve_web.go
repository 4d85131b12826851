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
	"sync"
	"time"

	"github.com/passgate/passgate/backends/imapupstream"
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
		up, err := imapUpstream(d, imapupstream.LoginPassthrough)
		if err != nil {
			return nil, err
		}
		return IMAPVerifier(up), nil
	}
}

// IMAPVerifier is web.verify: imap over up, which must be in passthrough
// mode: the user's own password is the login, and the browser's address
// is forwarded as up forwards a client's. serve wires it, and the
// integration tests use it as it is.
func IMAPVerifier(up *imapupstream.Upstream) *verify.IMAP {
	return &verify.IMAP{Login: func(ctx context.Context, user, password string, client netip.AddrPort) (net.Conn, error) {
		conn, _, err := up.Login(ctx, imapupstream.Request{User: user, Password: password, Client: client})
		if errors.Is(err, imapupstream.ErrRefused) {
			return nil, verify.ErrRefused
		}
		if err != nil {
			return nil, fmt.Errorf("no upstream answered (imap.upstream.addresses): %w", err)
		}
		return conn, nil
	}}
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
func buildWeb(d *deps, st *store.Store) (service, error) {
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
		SignIn:               &webSignIn{engine: d.engine, verifier: v},
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
	handler, err := withAdmin(d, st, p, pub)
	if err != nil {
		return service{}, err
	}
	srv := &http.Server{
		Handler:           handler,
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

// webSignIn decides portal sign-ins with the decision of every login
// (policy.Web): the TLS step, the lockout, disabled users, the audit and
// the failure delay are the engine's; the primary password is checked by
// the verifier of web.verify and the second factor by the portal.
type webSignIn struct {
	engine   *policy.Engine
	verifier verify.Verifier
}

var _ portal.SignIn = (*webSignIn)(nil)

func webAttempt(a portal.Attempt, f policy.Factor) policy.Attempt {
	return policy.Attempt{Proto: policy.Web, Factor: f, User: a.User, Secret: policy.Secret(a.Password), Client: a.Client,
		TLS: a.TLS, Local: a.Local, ClientName: a.ClientName, Received: a.Started, Passkey: a.Passkey}
}

// finish ends l with r and maps the class of reply to the portal's:
// nil, ErrRefused (after the failure delay, even for step 1's refusal,
// so that every failure looks the same) or the temporary failure.
func (w *webSignIn) finish(ctx context.Context, l *policy.Login, r policy.Result, a portal.Attempt, cause error) error {
	switch l.Finish(ctx, r) {
	case policy.ClassOK:
		return nil
	case policy.ClassTemporary:
		if cause == nil {
			cause = errors.New("the decision could not be made")
		}
		return fmt.Errorf("portal sign-in: %w", cause)
	case policy.ClassNeedTLS:
		if wait := time.Until(a.Started.Add(w.engine.FailureDelay())); wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
	}
	return portal.ErrRefused
}

// Password implements portal.SignIn.
func (w *webSignIn) Password(ctx context.Context, a portal.Attempt) (portal.Account, error) {
	l, err := w.engine.Decide(ctx, webAttempt(a, policy.Password))
	if err != nil || !l.Allowed() {
		return portal.Account{}, w.finish(ctx, l, policy.NotAsked, a, err)
	}
	verr := w.verifier.Verify(ctx, l.User(), a.Password, a.Client)
	var r policy.Result = policy.Accepted
	switch {
	case errors.Is(verr, verify.ErrRefused):
		r = policy.Refused
	case verr != nil:
		r = policy.Unreachable(verr)
	}
	if err := w.finish(ctx, l, r, a, verr); err != nil {
		return portal.Account{}, err
	}
	return portal.Account{User: l.User(), MFA: string(l.MFA())}, nil
}

// SecondFactor implements portal.SignIn.
func (w *webSignIn) SecondFactor(ctx context.Context, a portal.Attempt, check func(ctx context.Context) (bool, error)) error {
	a.Password = ""
	l, err := w.engine.Decide(ctx, webAttempt(a, policy.SecondFactor))
	if err != nil || !l.Allowed() {
		return w.finish(ctx, l, policy.NotAsked, a, err)
	}
	ok, cerr := check(ctx)
	var r policy.Result = policy.Refused
	switch {
	case cerr != nil:
		r = policy.Unreachable(cerr)
	case ok:
		r = policy.Accepted
	}
	return w.finish(ctx, l, r, a, cerr)
}
