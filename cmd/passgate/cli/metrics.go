package cli

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/observe"
)

// readyTimeout bounds the store check behind /readyz.
const readyTimeout = 2 * time.Second

// metricsService serves m's handler on metrics.listen. It starts with the
// other listeners; serve stops it after them, so that /readyz answers 503
// through the whole drain.
func metricsService(m *metrics, addr string, st *store.Store, log *slog.Logger) service {
	srv := &http.Server{
		Handler:           m.handler(st, log),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return service{
		name:  "metrics",
		admin: true,
		addr:  addr,
		serve: func(ln net.Listener) error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
		shutdown: srv.Shutdown,
		close:    srv.Close,
	}
}

// metrics is serve's Prometheus registry (its own, not the library's
// global one) and the handler of metrics.listen: /metrics, /healthz and
// /readyz.
type metrics struct {
	reg      *prometheus.Registry
	logins   *prometheus.CounterVec // proto, credential, outcome
	open     *prometheus.GaugeVec   // listener
	accepted *prometheus.CounterVec // listener
	refused  *prometheus.CounterVec // listener: no valid PROXY header
	// limitRefused: listener, reason: over policy.limits' caps
	limitRefused *prometheus.CounterVec
	draining     atomic.Bool // set at shutdown: /readyz answers 503

	decisionSeconds  *prometheus.HistogramVec // proto
	relayed          *prometheus.CounterVec   // listener, direction
	storeSeconds     *prometheus.HistogramVec // op: the decision's store calls
	storeErrors      *prometheus.CounterVec   // op
	lockouts         *prometheus.CounterVec   // proto
	upstreamFailures *prometheus.CounterVec   // upstream, credential
}

// Label values that every series is created with at start, so that a
// dashboard or an alert finds a zero before the first event instead of
// no data.
var (
	metricProtos      = []string{"imap", "smtp", "ldap"}
	metricCredentials = []string{"app-password", "primary", "none"}
	metricOutcomes    = []string{"success", "failure", "unavailable"}
	metricStoreOps    = []string{"login_state", "record_login", "record"}
)

func newMetrics(journal *store.Journal) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passgate_logins_total",
			Help: "Login attempts by protocol, kind of credential (app-password, primary, none) and outcome (success, failure, unavailable).",
		}, []string{"proto", "credential", "outcome"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "passgate_connections_open",
			Help: "Client connections open, by listener.",
		}, []string{"listener"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passgate_connections_total",
			Help: "Client connections accepted, by listener.",
		}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "passgate_proxy_header_refused_total",
			Help: "Connections from policy.proxy_networks closed for want of a valid PROXY protocol header, by listener.",
		}, []string{"listener"}),
	}
	m.limitRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passgate_connections_refused_total",
		Help: "Connections refused before login for being over a cap of policy.limits, by listener and reason (per_address, total).",
	}, []string{"listener", "reason"})
	m.relayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passgate_relayed_bytes_total",
		Help: "Bytes relayed by ended sessions, by listener and direction: in (client to upstream) and out (upstream to client; SMTP counts message bytes in only).",
	}, []string{"listener", "direction"})
	m.decisionSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "passgate_decision_seconds",
		Help:    "Time the decision took for a login, by protocol: the store's lookup and the hash check, not the failure delay nor the upstream login.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"proto"})
	m.storeSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "passgate_store_seconds",
		Help:    "Time of the decision's store calls, by operation: login_state (the one query of a login), record_login and record (queued to the audit journal).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"op"})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passgate_store_errors_total",
		Help: "Store calls of the decision that failed, by operation; logins then get a temporary failure.",
	}, []string{"op"})
	m.lockouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passgate_lockout_refusals_total",
		Help: "Logins refused because their source was locked out (policy.lockout), by protocol.",
	}, []string{"proto"})
	m.upstreamFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "passgate_upstream_login_failures_total",
		Help: "Logins that passgate allowed and the upstream then refused, by upstream (imap, smtp, ldap) and credential: app-password means passgate vouched for the user and the upstream still said no (master user, XCLIENT or proxy authorization set up wrong, or a user the upstream does not know); primary is a wrong primary password.",
	}, []string{"upstream", "credential"})
	for _, p := range metricProtos {
		for _, c := range metricCredentials {
			for _, o := range metricOutcomes {
				m.logins.WithLabelValues(p, c, o)
			}
		}
		m.lockouts.WithLabelValues(p)
		m.decisionSeconds.WithLabelValues(p)
		m.upstreamFailures.WithLabelValues(p, "app-password")
		m.upstreamFailures.WithLabelValues(p, "primary")
	}
	for _, op := range metricStoreOps {
		m.storeSeconds.WithLabelValues(op)
		m.storeErrors.WithLabelValues(op)
	}
	m.reg.MustRegister(m.logins, m.open, m.accepted, m.refused, m.limitRefused,
		m.relayed, m.decisionSeconds, m.storeSeconds, m.storeErrors, m.lockouts, m.upstreamFailures,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "passgate_audit_queue_writes",
			Help: "Audit events and last-use updates waiting to be committed to the store.",
		}, func() float64 { return float64(journal.Pending()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "passgate_audit_lost_writes_total",
			Help: "Audit events and last-use updates that the store refused and that were written to the log instead.",
		}, func() float64 { return float64(journal.Lost()) }),
	)
	return m
}

// outcome counts one recorded login outcome (policy.Options.OnOutcome).
func (m *metrics) outcome(proto policy.Proto, credential policy.Credential, outcome policy.Outcome) {
	m.logins.WithLabelValues(proto.String(), credential.String(), outcome.String()).Inc()
}

// conns returns the connection observer of one listener; nil metrics
// give nil, which the listeners take as "none".
func (m *metrics) conns(listener string) observe.Conns {
	if m == nil {
		return nil
	}
	return listenerConns{
		open: m.open.WithLabelValues(listener), accepted: m.accepted.WithLabelValues(listener),
		in: m.relayed.WithLabelValues(listener, "in"), out: m.relayed.WithLabelValues(listener, "out"),
	}
}

// parked exports, for one IMAP listener, how many directions of its
// relayed sessions are parked (relay.Parker) and how many could not
// park; nothing without metrics.
func (m *metrics) parked(listener string, n, failures func() int64) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "passgate_relay_parked_directions",
		Help:        "Directions of relayed IMAP sessions that have been idle long enough to wait without a goroutine, by listener: two for a session whose client and upstream are both silent.",
		ConstLabels: prometheus.Labels{"listener": listener},
	}, func() float64 { return float64(n()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "passgate_relay_park_failures_total",
			Help:        "Idle directions of relayed IMAP sessions that could not park, by listener (the system's limit of epoll watches, fs.epoll.max_user_watches, or memory): each keeps its goroutine. Raise the limit when it grows.",
			ConstLabels: prometheus.Labels{"listener": listener},
		}, func() float64 { return float64(failures()) }))
}

// proxyRefused returns the counter hook of one listener for
// proxyheader.Options.OnRefused; nil without metrics.
func (m *metrics) proxyRefused(listener string) func() {
	if m == nil {
		return nil
	}
	c := m.refused.WithLabelValues(listener)
	return c.Inc
}

// connRefused returns the counter hook of one listener for
// connlimit.Options.OnRefused; nil without metrics.
func (m *metrics) connRefused(listener string) func(reason string) {
	if m == nil {
		return nil
	}
	return func(reason string) { m.limitRefused.WithLabelValues(listener, reason).Inc() }
}

type listenerConns struct {
	open     prometheus.Gauge
	accepted prometheus.Counter
	in, out  prometheus.Counter
}

func (l listenerConns) Opened() { l.open.Inc(); l.accepted.Inc() }
func (l listenerConns) Closed() { l.open.Dec() }

// Relayed implements observe.Bytes.
func (l listenerConns) Relayed(in, out int64) {
	l.in.Add(float64(max(in, 0)))
	l.out.Add(float64(max(out, 0)))
}

// handler serves /metrics; /healthz (200 while the process serves
// HTTP); and /readyz (200 when the store answers and serve is not
// shutting down, 503 otherwise, for a load balancer's health check).
func (m *metrics) handler(st *store.Store, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if m.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("not ready: shutting down\n"))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := st.Ping(ctx); err != nil {
			log.Warn("readiness check failed: the store does not answer", slog.Any("err", err))
			w.WriteHeader(http.StatusServiceUnavailable)
			// The details (which may name hosts) go to the log only.
			w.Write([]byte("not ready: the store does not answer\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}

// decided returns the hook for policy.Options.OnDecision; nil metrics
// give nil.
func (m *metrics) decided() func(proto policy.Proto, took time.Duration) {
	if m == nil {
		return nil
	}
	return func(proto policy.Proto, took time.Duration) {
		m.decisionSeconds.WithLabelValues(proto.String()).Observe(took.Seconds())
	}
}

// observeStore wraps the decision's store so that its calls are timed and
// counted, and the audit events it records feed the lockout and upstream
// counters. nil metrics return s itself. A store that reads a login's
// lockout counters with its login state (loginLockoutReader) stays one:
// wrapped without that read, it would cost every login a second read.
func (m *metrics) observeStore(s policy.Store) policy.Store {
	if m == nil {
		return s
	}
	if b, ok := s.(loginLockoutReader); ok {
		return observedBoth{observedStore{s: s, m: m}, b}
	}
	return observedStore{s: s, m: m}
}

// loginLockoutReader is the one-statement read of a login's counters and
// login state that policy uses when its Store and its Counters are one
// database (Backing); *store.Store and *store.Journal implement it.
type loginLockoutReader interface {
	LoginLockoutState(ctx context.Context, lockUser, lockAddr, user, secret string) (store.LockoutState, store.LoginState, error)
	Backing() *store.Store
}

// observedBoth is observedStore of a loginLockoutReader, with the one
// read timed as login_state.
type observedBoth struct {
	observedStore
	b loginLockoutReader
}

func (o observedBoth) LoginLockoutState(ctx context.Context, lockUser, lockAddr, user, secret string) (store.LockoutState, store.LoginState, error) {
	start := time.Now()
	st, ls, err := o.b.LoginLockoutState(ctx, lockUser, lockAddr, user, secret)
	o.done("login_state", start, err)
	return st, ls, err
}

// Backing is the wrapped store's database.
func (o observedBoth) Backing() *store.Store { return o.b.Backing() }

// observedStore is policy.Store with metrics.
type observedStore struct {
	s policy.Store
	m *metrics
}

func (o observedStore) done(op string, start time.Time, err error) {
	o.m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrNotFound) {
		o.m.storeErrors.WithLabelValues(op).Inc()
	}
}

func (o observedStore) LoginState(ctx context.Context, user, secret string) (store.LoginState, error) {
	start := time.Now()
	ls, err := o.s.LoginState(ctx, user, secret)
	o.done("login_state", start, err)
	return ls, err
}

func (o observedStore) RecordLogin(ctx context.Context, id int64, u store.Usage, ev store.AuditEvent) error {
	start := time.Now()
	err := o.s.RecordLogin(ctx, id, u, ev)
	o.done("record_login", start, err)
	return err
}

func (o observedStore) Record(ctx context.Context, ev store.AuditEvent) error {
	o.m.countEvent(ev)
	start := time.Now()
	err := o.s.Record(ctx, ev)
	o.done("record", start, err)
	return err
}

// Reasons of the decision's audit events that the counters look for (see
// policy's Engine: lockout and PrimaryResult).
const (
	reasonLockedOut          = "reason=locked out"
	reasonUpstreamRefusedApp = "reason=app password accepted, but the upstream refused"
	reasonUpstreamRefusedPri = "reason=primary password refused by the upstream"
)

// countEvent counts the lockout refusals and upstream refusals among the
// login events the decision records.
func (m *metrics) countEvent(ev store.AuditEvent) {
	if ev.Action != "login" || ev.Outcome != "failure" {
		return
	}
	proto, _, _ := strings.Cut(ev.Actor, ":")
	switch {
	case strings.Contains(ev.Detail, reasonLockedOut):
		m.lockouts.WithLabelValues(proto).Inc()
	case strings.Contains(ev.Detail, reasonUpstreamRefusedApp):
		m.upstreamFailures.WithLabelValues(proto, "app-password").Inc()
	case strings.Contains(ev.Detail, reasonUpstreamRefusedPri):
		m.upstreamFailures.WithLabelValues(proto, "primary").Inc()
	}
}
