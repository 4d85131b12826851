package cli

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/observe"
)

// fakeStore is policy.Store answering err to every call.
type fakeStore struct{ err error }

func (f fakeStore) LoginState(context.Context, string, string) (store.LoginState, error) {
	return store.LoginState{}, f.err
}
func (f fakeStore) RecordLogin(context.Context, int64, store.Usage, store.AuditEvent) error {
	return f.err
}
func (f fakeStore) Record(context.Context, store.AuditEvent) error { return f.err }

func TestObservedStore(t *testing.T) {
	m := newMetrics(store.NewJournal(nil, nil))
	if got := m.observeStore(fakeStore{}); got == (fakeStore{}) {
		t.Fatal("observeStore did not wrap")
	}
	var none *metrics
	if got := none.observeStore(fakeStore{}); got != (fakeStore{}) {
		t.Fatal("nil metrics wrapped the store")
	}
	ok := m.observeStore(fakeStore{})
	bad := m.observeStore(fakeStore{err: errors.New("connection refused")})
	invalid := m.observeStore(fakeStore{err: store.ErrInvalid})
	ctx := context.Background()
	for _, ev := range []store.AuditEvent{
		{Action: "login", Outcome: "failure", Actor: "imap:192.0.2.1:5000", Detail: "credential=none tls=true reason=locked out: too many failures from this address"},
		{Action: "login", Outcome: "failure", Actor: "smtp:192.0.2.1:5000", Detail: "credential=app-password tls=true reason=app password accepted, but the upstream refused the login on the user's behalf"},
		{Action: "login", Outcome: "failure", Actor: "ldap:192.0.2.1:5000", Detail: "credential=primary tls=true reason=primary password refused by the upstream"},
		{Action: "login", Outcome: "success", Actor: "imap:192.0.2.1:5000", Detail: "credential=primary tls=true reason=primary password accepted by the upstream"},
		{Action: "user.add", Outcome: "failure", Actor: "cli", Detail: "reason=locked out"},
	} {
		ok.Record(ctx, ev)
	}
	ok.LoginState(ctx, "alice", "x")
	bad.LoginState(ctx, "alice", "x")
	bad.Record(ctx, store.AuditEvent{})
	invalid.LoginState(ctx, "a b", "x")
	m.decided()("imap", 0)
	conns := m.conns("imaps")
	if _, ok := conns.(observe.Bytes); !ok {
		t.Fatal("the listeners' observer does not count bytes")
	}
	observe.Relayed(conns, 100, 2000)
	observe.Relayed(conns, 1, 0)
	if none.decided() != nil {
		t.Error("nil metrics gave a decision hook")
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"lockouts imap", value(t, m.lockouts.WithLabelValues("imap")), 1},
		{"lockouts smtp", value(t, m.lockouts.WithLabelValues("smtp")), 0},
		{"upstream smtp app-password", value(t, m.upstreamFailures.WithLabelValues("smtp", "app-password")), 1},
		{"upstream ldap primary", value(t, m.upstreamFailures.WithLabelValues("ldap", "primary")), 1},
		{"upstream imap primary", value(t, m.upstreamFailures.WithLabelValues("imap", "primary")), 0},
		{"store errors login_state", value(t, m.storeErrors.WithLabelValues("login_state")), 1},
		{"store errors record", value(t, m.storeErrors.WithLabelValues("record")), 1},
		{"relayed in", value(t, m.relayed.WithLabelValues("imaps", "in")), 101},
		{"relayed out", value(t, m.relayed.WithLabelValues("imaps", "out")), 2000},
		{"decisions imap", float64(histCount(t, m.decisionSeconds, "imap")), 1},
		{"decisions smtp", float64(histCount(t, m.decisionSeconds, "smtp")), 0},
		{"store login_state timed", float64(histCount(t, m.storeSeconds, "login_state")), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

// value reads a counter.
func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

// histCount reads the number of observations of one histogram series.
func histCount(t *testing.T, h *prometheus.HistogramVec, op string) uint64 {
	t.Helper()
	var d dto.Metric
	if err := h.WithLabelValues(op).(prometheus.Metric).Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}

// countingCounters is the store as the lockout's Counters, counting the
// reads of the counters alone (LockoutState): none when policy reads them
// with the login state in one statement.
type countingCounters struct {
	*store.Store
	alone *atomic.Int64
}

func (c countingCounters) LockoutState(ctx context.Context, user, addr string) (store.LockoutState, error) {
	c.alone.Add(1)
	return c.Store.LockoutState(ctx, user, addr)
}

// TestObservedStoreOneRead: with metrics on, as serve wires it (the
// journal observed as the Store, the store itself as the Counters), a
// login still reads its lockout counters and its login state in one
// statement, and that read is timed as login_state.
func TestObservedStoreOneRead(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	j := store.NewJournal(st, nil)
	t.Cleanup(func() { j.Close() })
	if _, err := st.AddUser(ctx, "alice", store.MFAEnforced); err != nil {
		t.Fatal(err)
	}
	_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		metrics bool
	}{{"metrics-off", false}, {"metrics-on", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var m *metrics
			if tc.metrics {
				m = newMetrics(j)
			}
			alone := new(atomic.Int64)
			e := policy.New(policy.Options{Store: m.observeStore(j), Counters: countingCounters{st, alone}, FailureDelay: -1,
				Lockout: policy.Lockout{MaxFailures: 10}})
			l, err := e.Decide(ctx, policy.Attempt{Proto: policy.IMAP, User: "alice", Secret: policy.Secret(secret), TLS: true,
				Client: netip.MustParseAddrPort("192.0.2.1:40000")})
			if err != nil || !l.Allowed() {
				t.Fatalf("Decide: %v (%s)", err, l.Reason())
			}
			l.Finish(ctx, policy.Accepted)
			if n := alone.Load(); n != 0 {
				t.Errorf("the lockout counters were read alone %d times: two reads per login instead of one", n)
			}
			if m != nil {
				if n := histCount(t, m.storeSeconds, "login_state"); n != 1 {
					t.Errorf("login_state timed %d times, want 1", n)
				}
			}
		})
	}
}
