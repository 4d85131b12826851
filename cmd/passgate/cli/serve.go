package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/connlimit"
	"github.com/passgate/passgate/proxy/imapfront"
	"github.com/passgate/passgate/proxy/ldapfront"
	"github.com/passgate/passgate/proxy/proxyheader"
	"github.com/passgate/passgate/proxy/revoke"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// deps is what every protocol's wiring (serve_imap.go, serve_smtp.go,
// serve_ldap.go) gets from serve: the loaded configuration, the logger, the
// decision engine, the registry of live sessions and the server TLS
// configuration (nil when no certificate is configured).
type deps struct {
	cfg       *configs.Config
	log       *slog.Logger
	engine    *policy.Engine
	relays    *revoke.Registry
	serverTLS *tls.Config
	// onStop runs after every listener has drained: what the services
	// share (the LDAP lookup connection) is closed there.
	onStop []func()
	// metrics is nil without metrics.listen.
	metrics *metrics
	// imapReady is how many upstream connections the IMAP listeners keep
	// ready (imapReadyConns; none in the demo, whose upstream is in the
	// process).
	imapReady int
	// smtpReady is the same for the SMTP listeners (smtpReadyConns).
	smtpReady int
}

// service is one listening socket and the server behind it.
type service struct {
	name     string // "imap", "imaps", "smtp", "submissions", "ldap", "ldaps"
	addr     string // host:port to listen on
	serve    func(ln net.Listener) error
	shutdown func(ctx context.Context) error // stop accepting, drain until ctx ends
	close    func() error                    // force-close every session
	// admin marks the HTTP endpoints of metrics.listen: clients are not
	// proxied to it (no PROXY header), and it stops after the protocol
	// listeners have drained, so that /readyz answers through the drain.
	admin bool
}

// front is a protocol listener as serve runs it: imapfront, smtpfront and
// ldapfront's Server alike.
type front interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
	Close() error
}

// frontService is the service of one protocol listener on addr.
func frontService(name, addr string, srv front) service {
	return service{name: name, addr: addr, serve: srv.Serve, shutdown: srv.Shutdown, close: srv.Close}
}

// Timings of serve.
const (
	drainTimeout   = 30 * time.Second       // SIGTERM: how long live sessions may finish
	revokeInterval = 500 * time.Millisecond // how often deleted app passwords are looked for
)

// cmdServe runs "passgate serve": it loads and validates the configuration,
// opens and migrates the store, starts every configured listener and runs
// until ctx ends (SIGINT or SIGTERM), then drains.
func cmdServe(ctx context.Context, e *env, args []string) int {
	f := newFlags("serve", "[--config FILE]",
		"Run the IMAP, SMTP and LDAP listeners and the web portal of the configuration until SIGINT or SIGTERM, then drain.\nSIGHUP reloads the TLS certificate.")
	cfgPath := f.configFlag()
	if _, code, ok := e.parse(f, args, 0, 0); !ok {
		return code
	}
	cfg, path, err := e.loadConfig(*cfgPath)
	if err != nil {
		return e.fail(f.path, configProblem(path, err))
	}
	log := newLogger(e, cfg, "json")
	if path == "" {
		log.Warn("no configuration file: running on the embedded defaults")
	}
	if err := serve(ctx, e, cfg, log, nil); err != nil {
		return e.fail(f.path, err)
	}
	return 0
}

func newLogger(e *env, cfg *configs.Config, defFormat string) *slog.Logger {
	var level slog.Level
	switch cfg.Log.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	format := cfg.Log.Format
	if format == "" {
		format = defFormat
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(e.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(e.Stderr, opts))
}

// serve opens and migrates the store, then runs the listeners of cfg
// until ctx ends and drains them. over, when not nil, learns the bound
// addresses once every listener accepts (demo prints them).
func serve(ctx context.Context, e *env, cfg *configs.Config, log *slog.Logger, over *serveOverrides) error {
	if cfg.IMAP.Listen == "" && cfg.IMAP.ListenTLS == "" && cfg.SMTP.Listen == "" && cfg.SMTP.ListenTLS == "" &&
		cfg.LDAP.Listen == "" && cfg.LDAP.ListenTLS == "" && cfg.Web.Listen == "" {
		// Said before the store is opened, so that nothing is created.
		return errNoListener
	}
	for _, w := range cfg.Warnings() {
		log.Warn(w) // the same list as check-config's
	}
	// SIGHUP reloads the certificate. It is caught from the start, before
	// the store is opened and the ports, and even without a certificate,
	// so that "systemctl reload" (a certificate renewal's deploy hook)
	// never stops the service, however soon after its start it comes; one
	// that comes before the listeners run is acted on once they do.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	// Logins' audit events and last use are written in the background,
	// many to a commit; closing the journal (after the listeners have
	// drained) writes what is still queued, then closes the store.
	journal := store.NewJournal(st, log)
	defer journal.Close()
	var m *metrics
	var onOutcome func(policy.Proto, policy.Credential, policy.Outcome)
	if cfg.Metrics.Listen != "" {
		m = newMetrics(journal)
		onOutcome = m.outcome
	}

	groups, closeGroups, err := mfaGroups(cfg) // serve_ldap.go
	if err != nil {
		return err
	}
	defer closeGroups()
	engine, err := newEngine(cfg, m.observeStore(journal), groups, st, log, onOutcome, m.decided())
	if err != nil {
		return err
	}
	proxies, err := parsePrefixes("policy.proxy_networks", cfg.Policy.ProxyNetworks)
	if err != nil {
		return err
	}
	certs, err := newCertReloader(cfg, log)
	if err != nil {
		return err
	}
	d := &deps{cfg: cfg, log: log, engine: engine, relays: revoke.NewRegistry(), metrics: m, imapReady: imapReadyConns, smtpReady: smtpReadyConns}
	if over != nil && over.noIMAPReady {
		d.imapReady, d.smtpReady = 0, 0
	}
	if certs != nil {
		d.serverTLS = certs.tlsConfig()
	}

	services, err := buildServices(d)
	if err != nil {
		return err
	}
	// A portal alone is a whole instance: users manage their app
	// passwords there, and other instances sharing the store serve the
	// protocols.
	if cfg.Web.Listen != "" {
		web, err := buildWeb(d, st) // serve_web.go
		if err != nil {
			return err
		}
		services = append(services, web)
	}
	if len(services) == 0 {
		return errNoListener
	}
	if m != nil {
		services = append(services, metricsService(m, cfg.Metrics.Listen, st, log))
	}
	lim := connlimit.New(connlimit.Limits{PerAddress: cfg.Policy.Limits.MaxConnectionsPerAddress, Total: cfg.Policy.Limits.MaxPreLoginConnections})
	lns, err := listenAll(services, proxies, lim, m, log)
	if err != nil {
		return err
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var shuttingDown atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, len(services))
	for i, s := range services {
		log.Info("listening", slog.String("listener", s.name), slog.String("addr", lns[i].Addr().String()))
		wg.Add(1)
		go func(s service, ln net.Listener) {
			defer wg.Done()
			err := s.serve(ln)
			if err != nil && runCtx.Err() == nil && !shuttingDown.Load() {
				errc <- fmt.Errorf("%s on %s: %w", s.name, ln.Addr(), err)
			}
		}(s, lns[i])
	}
	if over != nil && over.ready != nil {
		addrs := make(map[string]string, len(services))
		for i, s := range services {
			addrs[s.name] = lns[i].Addr().String()
		}
		over.ready(addrs)
	}

	// Close live sessions of deleted app passwords, whichever instance or
	// command deleted them.
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.relays.Watch(runCtx, revokeInterval, st.ExistingAppPasswords, func(err error) {
			log.Warn("revocation check failed; live sessions kept", slog.Any("err", err))
		})
	}()
	// Audit retention and the login partitions ahead.
	wg.Add(1)
	go func() {
		defer wg.Done()
		maintainAudit(runCtx, st, cfg, log)
	}()
	// On PostgreSQL, deletions are announced (LISTEN/NOTIFY) and close
	// the sessions at once; the polling above stays as the fallback.
	if st.Driver() == store.DriverPostgres {
		wg.Add(1)
		go func() {
			defer wg.Done()
			listenRevocations(runCtx, st, d.relays, log)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		reloadOnHUP(runCtx, hup, certs, log)
	}()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", slog.Duration("drain", drainTimeout))
	case runErr = <-errc:
		log.Error("listener failed; shutting down", slog.Any("err", runErr))
	}
	shuttingDown.Store(true)
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainTimeout)
	defer cancel()
	if m != nil {
		m.draining.Store(true) // /readyz: 503 from now on
	}
	drainAll(drainCtx, services, log)
	for _, f := range d.onStop {
		f()
	}
	stop()
	wg.Wait()
	return runErr
}

// listenRevocations closes the live sessions of every app password that
// PostgreSQL announces as deleted, and polls once whenever the
// notification connection is (re-)established.
func listenRevocations(ctx context.Context, st *store.Store, relays *revoke.Registry, log *slog.Logger) {
	first := true
	poll := func() {
		// The listener connects through the store's DSN: with several
		// hosts, to the one that accepts writes, so after a failover it
		// listens on the promoted standby.
		if first {
			log.Debug("revocation notifications listening")
		} else {
			log.Info("revocation notifications resumed")
		}
		first = false
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := relays.Poll(pctx, st.ExistingAppPasswords); err != nil {
			log.Warn("revocation check after the notification connection came back failed; the timer's will follow", slog.Any("err", err))
		}
	}
	err := st.ListenRevocations(ctx, func(id int64) {
		log.Debug("app password deletion announced", slog.Int64("app_password_id", id))
		if n := relays.Revoke(id); n > 0 {
			log.Info("app password deleted: live sessions closed", slog.Int64("app_password_id", id), slog.Int("sessions", n))
		}
	}, poll, func(err error) {
		log.Warn("revocation notifications interrupted; polling covers the gap", slog.Any("err", err))
	})
	if err != nil {
		log.Warn("revocation notifications unavailable; polling only", slog.Any("err", err))
	}
}

// newEngine builds the decision from the policy section of cfg.
func newEngine(cfg *configs.Config, st policy.Store, groups policy.Groups, counters policy.Counters, log *slog.Logger, onOutcome func(policy.Proto, policy.Credential, policy.Outcome), onDecision func(policy.Proto, time.Duration)) (*policy.Engine, error) {
	trusted, err := parsePrefixes("policy.trusted_networks", cfg.Policy.TrustedNetworks)
	if err != nil {
		return nil, err
	}
	delay := cfg.Policy.FailureDelay.D()
	if delay == 0 {
		delay = -1 // written as 0 in the file: no delay
	}
	var forbidden []string
	if sep := cfg.IMAP.Upstream.Separator; sep != "" {
		// Dovecot applies its master-user separator to every login it
		// checks, SMTP AUTH through its auth socket included.
		forbidden = append(forbidden, sep)
	}
	lo := cfg.Policy.Lockout
	return policy.New(policy.Options{
		Store:           st,
		TrustedNetworks: trusted,
		FailureDelay:    delay,
		ForbiddenInUser: forbidden,
		Realms:          cfg.Policy.Realms,
		MFAGroups:       groups,
		Logger:          log,
		OnOutcome:       onOutcome,
		OnDecision:      onDecision,
		Lockout: policy.Lockout{
			MaxFailures: lo.MaxFailures, MaxAddressFailures: lo.MaxAddressFailures, MaxUserFailures: lo.MaxUserFailures,
			Window: lo.Window.D(), Duration: lo.Duration.D(), MaxDuration: lo.MaxDuration.D(),
		},
		// The store counts, so that every instance sharing it sees the
		// same failures and a restart forgets none.
		Counters: counters,
	}), nil
}

// listenAll opens every service's listener; the protocol listeners
// accept a PROXY header from proxies. On an error it closes what it
// opened.
func listenAll(services []service, proxies []netip.Prefix, lim *connlimit.Limiter, m *metrics, log *slog.Logger) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, len(services))
	for _, s := range services {
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen for %s on %s: %w (is another process using the port? change %s in the configuration)", s.name, s.addr, err, listenKey(s.name))
		}
		if !s.admin {
			// Connections from the load balancers start with a PROXY
			// header naming the client.
			ln = proxyheader.Listen(ln, proxyheader.Options{From: proxies, Logger: log.With(slog.String("listener", s.name)),
				OnRefused: m.proxyRefused(s.name)})
		}
		if refusal, ok := refusals[s.name]; ok {
			// Connections before login are capped per client address and
			// in total, across the protocols (policy.limits).
			ln = connlimit.Listen(ln, lim, connlimit.Options{Refusal: refusal, OnRefused: m.connRefused(s.name)})
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// refusals are what each protocol listener says to a connection over
// policy.limits' caps before closing it; nil on implicit TLS, which would
// need a handshake first. The portal is not capped.
var refusals = map[string][]byte{
	"imap": []byte(imapfront.Refusal), "smtp": []byte(smtpfront.Refusal), "ldap": ldapfront.Refusal(),
	"imaps": nil, "submissions": nil, "ldaps": nil,
}

// reloadOnHUP reloads the certificate at each signal on hup until ctx
// ends.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, certs *certReloader, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if certs == nil {
				log.Info("SIGHUP: no certificate configured, nothing to reload")
			} else if err := certs.reload(); err != nil {
				log.Error("certificate reload failed; keeping the old certificate", slog.Any("err", err))
			} else {
				log.Info("certificate reloaded")
			}
		}
	}
}

// drainAll shuts the services down within ctx: the protocol listeners
// together, then the admin endpoints; a service that does not drain in
// time is closed.
func drainAll(ctx context.Context, services []service, log *slog.Logger) {
	for _, admin := range []bool{false, true} {
		var sw sync.WaitGroup
		for _, s := range services {
			if s.admin != admin {
				continue
			}
			sw.Add(1)
			go func(s service) {
				defer sw.Done()
				if err := s.shutdown(ctx); err != nil {
					log.Warn("drain ended; closing sessions", slog.String("listener", s.name), slog.Any("err", err))
					s.close()
				}
			}(s)
		}
		sw.Wait()
	}
}

// listenKey is the configuration key of the service named name.
func listenKey(name string) string {
	switch name {
	case "imaps":
		return "imap.listen_tls"
	case "submissions":
		return "smtp.listen_tls"
	case "ldaps":
		return "ldap.listen_tls"
	}
	return name + ".listen" // imap, smtp, ldap, metrics
}

// errNoListener: serve was given neither a protocol listener nor the portal.
var errNoListener = errors.New("no listener configured: set imap.listen, smtp.listen or ldap.listen (or their listen_tls), or web.listen, in the configuration")

// serveOverrides lets demo and tests learn the bound addresses.
type serveOverrides struct {
	ready       func(map[string]string) // listener name → bound address
	noIMAPReady bool                    // keep no ready IMAP (nor SMTP) upstream connections
}

// parsePrefixes parses the CIDRs of the configuration key key.
func parsePrefixes(key string, cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("%s (%q): not a CIDR: %w", key, c, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// certReloader serves the configured certificate and reloads it on SIGHUP.
type certReloader struct {
	certFile, keyFile string
	min               uint16
	cur               atomic.Pointer[tls.Certificate]
}

func newCertReloader(cfg *configs.Config, log *slog.Logger) (*certReloader, error) {
	if cfg.TLS.CertFile == "" && cfg.TLS.KeyFile == "" {
		return nil, nil
	}
	r := &certReloader{certFile: cfg.TLS.CertFile, keyFile: cfg.TLS.KeyFile}
	switch cfg.TLS.MinVersion {
	case "1.0":
		r.min = tls.VersionTLS10
	case "1.1":
		r.min = tls.VersionTLS11
	case "1.3":
		r.min = tls.VersionTLS13
	default:
		r.min = tls.VersionTLS12
	}
	if r.min < tls.VersionTLS12 {
		log.Warn("tls.min_version allows TLS older than 1.2 for very old clients (Outlook 2010 on Windows 7); raise it to \"1.2\" once they are gone",
			slog.String("min_version", cfg.TLS.MinVersion))
	}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) reload() error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate (tls.cert_file %q, tls.key_file %q): %w", r.certFile, r.keyFile, err)
	}
	r.cur.Store(&c)
	return nil
}

func (r *certReloader) tlsConfig() *tls.Config {
	c := &tls.Config{
		MinVersion: r.min,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.cur.Load(), nil
		},
	}
	if r.min < tls.VersionTLS12 {
		// Windows 7's Schannel speaks TLS 1.0 with ECDHE-RSA or RSA
		// AES-CBC suites; Go leaves the RSA key exchange suites out by
		// default, so list them.
		c.CipherSuites = []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA,
		}
	}
	return c
}
