package policy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// BenchmarkDecideSQLite measures a whole decision as serve wires it:
// Decide and Finish over a SQLite store, the audit through a
// store.Journal (committed in the background: cpu-ns/op, the process's
// CPU time per login, counts it; ns/op only as it competes), the shared lockout in the same database,
// and the decision's log line through a JSON handler at level Info.
//
//   - app-password: a right app password, accepted upstream;
//   - primary: a user without a row (MFA disabled), accepted upstream;
//   - wrong: a wrong secret of an enforced user from a new address each
//     time (the failure counts, synchronously, in the store);
//   - app-password/paced: app-password logins 2 ms apart, as sessions
//     arrive one by one: the journal commits each alone (ns/op counts
//     the pause; cpu-ns/op is the figure).
//
// Run with go test -run '^$' -bench DecideSQLite -benchmem ./policy/.
func BenchmarkDecideSQLite(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: dir + "/passgate.db", KeyFile: dir + "/passgate.key"})
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
	j := store.NewJournal(st, nil)
	b.Cleanup(func() { _ = j.Flush(ctx) })
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := New(Options{Store: j, Counters: st, FailureDelay: -1, Logger: log,
		Lockout: Lockout{MaxFailures: 1 << 30, MaxAddressFailures: 1 << 30, MaxUserFailures: 1 << 30}})
	client := netip.MustParseAddrPort("192.0.2.1:40000")
	for _, c := range []struct {
		name    string
		user    string
		secret  string
		allowed bool
		newAddr bool
		pause   time.Duration
	}{
		{"app-password", "alice", secret, true, false, 0},
		{"primary", "bob", "bob's primary password", true, false, 0},
		{"wrong", "alice", "not-an-app-password", false, true, 0},
		{"app-password/paced", "alice", secret, true, false, 2 * time.Millisecond},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			a := Attempt{Proto: IMAP, User: c.user, Secret: Secret(c.secret), TLS: true, Client: client}
			i := 0
			cpu0 := cpuTime(b)
			for b.Loop() {
				i++
				if c.newAddr {
					a.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 40000)
				}
				a.Received = time.Time{}
				l, err := e.Decide(ctx, a)
				if err != nil || l.Allowed() != c.allowed {
					b.Fatalf("Decide: %v, allowed %v (%s)", err, l.Allowed(), l.Reason())
				}
				l.Finish(ctx, Accepted)
				if c.pause > 0 {
					time.Sleep(c.pause)
				}
			}
			if err := j.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the CPU time (user and system) of this process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", os.NewSyscallError("getrusage", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
