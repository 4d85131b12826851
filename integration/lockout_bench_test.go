package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/passgate/passgate/backends/imapupstream"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/imapfront"
)

// What the lockout adds to a login, side by side in one run (without
// -race; the benchmark starts its own PostgreSQL and Dovecot):
//
//	go test -run '^$' -bench Lockout -benchtime 500x ./integration/
//
// BenchmarkLockoutDecide is a BenchmarkCheck-style measure of the
// decision (Decide and Finish of a right app password) on a PostgreSQL
// store: lockout off, counted in this process's memory (the lockout
// before it moved into the store), and shared through the store.
//
// BenchmarkLockoutIMAPLogin runs whole IMAP sessions (STARTTLS with a
// full handshake, LOGIN, SELECT, LOGOUT) against the performance-mode
// Dovecot directly and through passgate on PostgreSQL in those three
// modes, taking turns, and reports for each the median session, the
// median LOGIN (from the command to its reply) and, through passgate,
// the median decision as the engine times it (OnDecision, the figure
// behind passgate_decision_seconds). It also counts the store's
// statements per login and fails when a success costs a synchronous
// write: the lockout adds one read (its counters, before the secret is
// checked); what a success changes in it rides on the audit write that
// the journal batches in the background (lockout-notes/login: 0 once
// the address is familiar, refreshed at most once a day).
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
	ctx := context.Background()
	targets := benchTargets(b)
	perf := targets[len(targets)-1].dovecot
	st, err := store.Open(ctx, store.Options{Driver: store.DriverPostgres, DSN: benchPostgres(b), KeyFile: b.TempDir() + "/passgate.key"})
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
	// The defaults of policy.lockout (configs/defaults.go).
	on := policy.Lockout{MaxFailures: 10, MaxAddressFailures: 50, MaxUserFailures: 100}
	modes := []*lockoutMode{{name: "direct", s: benchSession{perf.IMAPAddr, "alice", perf.Users["alice"]}}}
	for _, m := range []struct {
		name    string
		lockout policy.Lockout
		shared  bool // the counters are the store's (else this process's memory)
	}{{"off", policy.Lockout{}, false}, {"in-process", on, false}, {"shared-postgres", on, true}} {
		f := startLockoutFront(b, st, perf, m.lockout, m.shared)
		modes = append(modes, &lockoutMode{name: m.name, s: benchSession{f.addr, "alice", secret}, f: f})
	}
	// One login each first: it makes 127.0.0.1 familiar (written once,
	// with the audit event, when the journal commits), as a user's
	// device is after its first day.
	for _, m := range modes {
		if _, err := benchLogin(m.s); err != nil {
			b.Fatalf("%s: %v", m.name, err)
		}
		if m.f != nil {
			if err := m.f.journal.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			m.f.reset()
		}
	}
	// The modes take turns, in a rotating order, so that each sees the
	// same load on a machine shared with other work: one after another,
	// minutes apart, they would differ by the load more than by the
	// lockout.
	for i := 0; b.Loop(); i++ {
		for k := range modes {
			m := modes[(i+k)%len(modes)]
			start := time.Now()
			login, err := benchLogin(m.s)
			if err != nil {
				b.Fatalf("%s: %v", m.name, err)
			}
			m.sessions = append(m.sessions, time.Since(start))
			m.logins = append(m.logins, login)
		}
	}
	for _, m := range modes {
		m.report(b)
	}
}

// lockoutMode is one column of BenchmarkLockoutIMAPLogin: Dovecot
// directly (f nil) or passgate in front of it in one lockout mode.
type lockoutMode struct {
	name             string
	s                benchSession
	f                *benchFront
	sessions, logins []time.Duration
}

// report adds m's medians (whole session, LOGIN command, and passgate's
// decision) and, for passgate, its store statements per login; it fails
// the benchmark when a success cost a synchronous write.
func (m *lockoutMode) report(b *testing.B) {
	ms := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(m.sessions), m.name+"-session-ms")
	b.ReportMetric(ms(m.logins), m.name+"-login-ms")
	if m.f == nil {
		return
	}
	n := &m.f.n
	m.f.mu.Lock()
	decides := slices.Clone(m.f.decides)
	m.f.mu.Unlock()
	b.ReportMetric(ms(decides), m.name+"-decide-ms")
	per := func(v *atomic.Int64) float64 { return float64(v.Load()) / float64(len(m.logins)) }
	b.ReportMetric(per(&n.reads), m.name+"-sync-reads/login")
	b.ReportMetric(per(&n.writes), m.name+"-sync-writes/login")
	b.ReportMetric(per(&n.queued), m.name+"-queued-writes/login")
	b.ReportMetric(per(&n.notes), m.name+"-lockout-notes/login")
	if w := n.writes.Load(); w != 0 {
		b.Errorf("%s: %d successful logins made %d synchronous writes to the store, want none", m.name, len(m.logins), w)
	}
}

// benchLogin runs one whole session: STARTTLS with a fresh TLS
// configuration (a full handshake), LOGIN, SELECT, LOGOUT. It returns the
// time from sending LOGIN to its reply, where the decision (and the
// lockout) runs.
func benchLogin(s benchSession) (time.Duration, error) {
	cl, err := imapclient.DialStartTLS(s.addr, &imapclient.Options{TLSConfig: env.certs.ClientTLS()})
	if err != nil {
		return 0, fmt.Errorf("STARTTLS to %s: %w", s.addr, err)
	}
	defer cl.Close()
	start := time.Now()
	if err := cl.Login(s.user, s.password).Wait(); err != nil {
		return 0, fmt.Errorf("LOGIN at %s: %w", s.addr, err)
	}
	login := time.Since(start)
	if _, err := cl.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return 0, fmt.Errorf("SELECT: %w", err)
	}
	if err := cl.Logout().Wait(); err != nil {
		return 0, fmt.Errorf("LOGOUT: %w", err)
	}
	return login, nil
}

// startLockoutFront starts passgate's IMAP path wired as serve wires it
// (the store behind a journal, the decision, a STARTTLS listener, a
// master-user login to Dovecot with ID forwarding), with lockout and its
// counters as given: the store's when shared, else this process's memory
// (policy.Options.Counters nil, the lockout before it moved into the
// store). serve always counts in the store, hence the wiring here: the
// modes differ in nothing else. It returns the listener's address and
// the counts of the store's statements and the decisions' durations.
func startLockoutFront(b *testing.B, st *store.Store, d *testenv.Dovecot, lockout policy.Lockout, shared bool) *benchFront {
	b.Helper()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	f := &benchFront{journal: store.NewJournal(st, log)}
	j := f.journal
	var counters policy.Counters
	if shared {
		counters = countingCounters{st, &f.n}
	}
	engine := policy.New(policy.Options{Store: countingStore{j, &f.n}, Counters: counters, Lockout: lockout, FailureDelay: 100 * time.Millisecond,
		ForbiddenInUser: []string{"*"}, Logger: log, OnDecision: f.decided})
	up, err := imapupstream.New(imapupstream.Options{
		Addresses: []string{d.IMAPAddr}, TLS: imapupstream.TLSNone, Login: imapupstream.LoginMaster,
		MasterUser: d.MasterUser, MasterPassword: d.MasterPassword, MasterStyle: imapupstream.MasterAuthzid,
		ForwardClient: imapupstream.ForwardID, DialTimeout: 2 * time.Second, Logger: log,
	})
	if err != nil {
		b.Fatal(err)
	}
	tc, err := env.certs.ServerTLS()
	if err != nil {
		b.Fatal(err)
	}
	srv := imapfront.New(imapfront.Options{Decider: engine, Upstream: cli.IMAPUpstream(up), TLSConfig: tc, Logger: log})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	b.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, imapfront.ErrServerClosed) {
			b.Errorf("imapfront Serve: %v", err)
		}
		j.Close()
	})
	f.addr = ln.Addr().String()
	return f
}

// benchFront is a running IMAP path of startLockoutFront.
type benchFront struct {
	addr    string
	journal *store.Journal
	n       statements

	mu      sync.Mutex
	decides []time.Duration // how long each decision took
}

func (f *benchFront) decided(_ policy.Proto, took time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decides = append(f.decides, took)
}

// reset forgets what was counted so far.
func (f *benchFront) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decides = nil
	f.n.reads.Store(0)
	f.n.writes.Store(0)
	f.n.queued.Store(0)
	f.n.notes.Store(0)
}

// statements counts what the login path asks of the store: reads and
// writes it waits for, and writes queued on the journal (committed in
// batches in the background), with the lockout notes they carry.
type statements struct {
	reads, writes, queued, notes atomic.Int64
}

// countingStore is policy.Store over the journal, counting.
type countingStore struct {
	j *store.Journal
	n *statements
}

func (c countingStore) LoginState(ctx context.Context, user, secret string) (store.LoginState, error) {
	c.n.reads.Add(1)
	return c.j.LoginState(ctx, user, secret)
}

func (c countingStore) RecordLogin(ctx context.Context, id int64, u store.Usage, ev store.AuditEvent) error {
	c.count(ev)
	return c.j.RecordLogin(ctx, id, u, ev)
}

func (c countingStore) Record(ctx context.Context, ev store.AuditEvent) error {
	c.count(ev)
	return c.j.Record(ctx, ev)
}

func (c countingStore) count(ev store.AuditEvent) {
	c.n.queued.Add(1)
	if ev.Lockout != nil {
		c.n.notes.Add(1)
	}
}

// countingCounters is policy.Counters over the store, counting.
type countingCounters struct {
	st *store.Store
	n  *statements
}

func (c countingCounters) LockoutState(ctx context.Context, user, addr string) (store.LockoutState, error) {
	c.n.reads.Add(1)
	return c.st.LockoutState(ctx, user, addr)
}

func (c countingCounters) AddFailure(ctx context.Context, user, addr string, now, windowFrom, locksFrom time.Time, recent []byte) (store.LockoutCounter, error) {
	c.n.writes.Add(1)
	return c.st.AddFailure(ctx, user, addr, now, windowFrom, locksFrom, recent)
}

func (c countingCounters) Lock(ctx context.Context, user, addr string, now, until time.Time) error {
	c.n.writes.Add(1)
	return c.st.Lock(ctx, user, addr, now, until)
}

// LockoutTag is a keyed hash computed here, no statement.
func (c countingCounters) LockoutTag(user, addr, secret string) ([]byte, error) {
	return c.st.LockoutTag(user, addr, secret)
}

func (c countingCounters) PruneLockout(ctx context.Context, now, idleBefore, familiarBefore time.Time) (int64, error) {
	c.n.writes.Add(1)
	return c.st.PruneLockout(ctx, now, idleBefore, familiarBefore)
}
