package cli

import (
	"github.com/passgate/passgate/policy"

	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/passgate/passgate/backends/store"
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
	draining atomic.Bool            // set at shutdown: /readyz answers 503
}

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
	m.reg.MustRegister(m.logins, m.open, m.accepted, m.refused,
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
	return listenerConns{open: m.open.WithLabelValues(listener), accepted: m.accepted.WithLabelValues(listener)}
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

type listenerConns struct {
	open     prometheus.Gauge
	accepted prometheus.Counter
}

func (l listenerConns) Opened() { l.open.Inc(); l.accepted.Inc() }
func (l listenerConns) Closed() { l.open.Dec() }

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
