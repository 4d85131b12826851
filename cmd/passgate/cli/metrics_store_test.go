package cli

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/passgate/passgate/backends/store"
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
