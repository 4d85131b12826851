package integration

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
)

// What the lockout adds to a login, side by side in one run:
//
//	go run ./integration/runtests -no-install -- -run '^$' -bench Lockout -benchtime 2s ./integration/
//
// BenchmarkLockoutDecide is a BenchmarkCheck-style measure of the
// decision (Decide and Finish of a right app password) on a PostgreSQL
// store: lockout off, counted in this process's memory (the lockout
// before it moved into the store), and shared through the store.
// BenchmarkLockoutIMAPLogin is the median of whole IMAP sessions
// (STARTTLS, LOGIN, SELECT, LOGOUT) through passgate on PostgreSQL in
// front of the performance-mode Dovecot, lockout off and shared.
func BenchmarkLockoutDecide(b *testing.B) {
	ctx := context.Background()
	dsn := benchPostgres(b)
	st, err := store.Open(ctx, store.Options{Driver: store.DriverPostgres, DSN: dsn, KeyFile: b.TempDir() + "/passgate.key"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := st.AddUser(ctx, "alice", store.MFAEnforced); err != nil {
		b.Fatal(err)
	}
	_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: "alice", Label: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	on := policy.Lockout{MaxFailures: 10, MaxAddressFailures: 50, MaxUserFailures: 100}
	for _, c := range []struct {
		name     string
		lockout  policy.Lockout
		counters policy.Counters
	}{{"off", policy.Lockout{}, nil}, {"in-process", on, nil}, {"shared-postgres", on, st}} {
		e := policy.New(policy.Options{Store: st, Counters: c.counters, Lockout: c.lockout, FailureDelay: -1})
		a := policy.Attempt{Proto: policy.IMAP, User: "alice", Secret: policy.Secret(secret), TLS: true,
			Client: netip.MustParseAddrPort("192.0.2.1:40000")}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.Received = time.Time{}
				l, err := e.Decide(ctx, a)
				if err != nil || !l.Allowed() {
					b.Fatalf("Decide: %v (%s)", err, l.Reason())
				}
				l.Finish(ctx, policy.Accepted)
			}
		})
	}
}

func BenchmarkLockoutIMAPLogin(b *testing.B) {
	targets := benchTargets(b)
	perf := targets[len(targets)-1].dovecot
	for _, c := range []struct{ name, yaml string }{
		{"off", "  lockout:\n    max_failures: 0\n    max_address_failures: 0\n    max_user_failures: 0\n"},
		{"shared-postgres", ""},
	} {
		p := startPassgate(b, passgateConfig{upstreams: []string{perf.IMAPAddr}, upstreamTLS: "none", postgresDSN: benchPostgres(b), policyYAML: c.yaml})
		p.enforce(b, "alice")
		pw := p.appPassword(b, "alice", "bench-"+c.name)
		s := benchSession{p.imapAddr, "alice", pw}
		b.Run(c.name, func(b *testing.B) {
			var durations []time.Duration
			for b.Loop() {
				start := time.Now()
				cl, err := s.login()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cl.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
					b.Fatalf("SELECT: %v", err)
				}
				if err := cl.Logout().Wait(); err != nil {
					b.Fatalf("LOGOUT: %v", err)
				}
				cl.Close()
				durations = append(durations, time.Since(start))
			}
			var r ratios
			r.report(b, c.name, durations)
		})
	}
}
