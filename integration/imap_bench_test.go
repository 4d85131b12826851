package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/passgate/passgate/integration/testenv"
)

// Benchmarks of passgate against the same Dovecot directly, side by side
// in one run:
//
//	go test -run '^$' -bench IMAP -benchtime 3s ./integration/
//
// BenchmarkIMAPLogin measures whole sessions (connect, STARTTLS with a full
// TLS 1.3 handshake, LOGIN, SELECT INBOX, LOGOUT); BenchmarkIMAPFetch
// measures FETCH of 50 MB of messages on a logged-in session. Each runs
// against Dovecot in its default mode (a login process per connection) and
// in performance mode (service_count = 0), as design.md's comparison does.
// passgate reaches Dovecot in plaintext with ID forwarding and the master
// user (authzid), the set-up of design.md's measurements; it runs as its
// own "passgate serve" process (the binary built from this tree). The
// column "nginx" is nginx's mail proxy in front of the same Dovecot
// (startNginxMail: STARTTLS from the client, plaintext LOGIN to Dovecot
// with alice's own password, its auth_http server in this process). The
// proxies' sub-benchmarks report "x-direct": their time per operation
// over the direct one's, measured just before in the same run, and
// BenchmarkIMAPLogin their CPU time per login ("proxy-cpu-us/login",
// from /proc, of the proxy's process alone).

// benchBulkMessages × benchBulkSize is the FETCH benchmark's 50 MB.
const (
	benchBulkMessages = 50
	benchBulkSize     = 1 << 20
	benchBulkMailbox  = "Bulk"
)

// benchTarget is one Dovecot with a passgate in front of it.
type benchTarget struct {
	name     string
	dovecot  *testenv.Dovecot
	passgate *passgateInstance
	password string // alice's app password at passgate
	nginx    *nginxMail
	bulk     int64 // bytes in the Bulk mailbox
}

// benchState is test-only state: the targets, built once per binary.
var benchState struct {
	once    sync.Once
	targets []*benchTarget
	err     error
	stops   []func()
}

// stopBenchServers stops what benchTargets started; TestMain calls it.
func stopBenchServers() {
	for _, stop := range benchState.stops {
		stop()
	}
}

// benchTargets starts (once) a performance-mode Dovecot next to the shared
// one, seeds 50 MB into alice's Bulk mailbox of each, and starts a passgate
// in front of each. They live until the test binary exits.
func benchTargets(b *testing.B) []*benchTarget {
	b.Helper()
	benchState.once.Do(func() {
		ctx := context.Background()
		dir, err := os.MkdirTemp(env.dir, "dovecot-perf-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			benchState.err = err
			return
		}
		perf, err := testenv.StartDovecotWith(ctx, dir, env.certs, testenv.DovecotOptions{Performance: true})
		if err != nil {
			benchState.err = err
			return
		}
		benchState.stops = append(benchState.stops, perf.Stop)
		for _, t := range []*benchTarget{{name: "default", dovecot: env.dovecot}, {name: "performance", dovecot: perf}} {
			msgs := make([][]byte, benchBulkMessages)
			for i := range msgs {
				msgs[i] = testenv.Message(1000+i, benchBulkSize)
				t.bulk += int64(len(msgs[i]))
			}
			if err := t.dovecot.SeedMailbox("alice", benchBulkMailbox, msgs); err != nil {
				benchState.err = err
				return
			}
			benchState.targets = append(benchState.targets, t)
		}
	})
	if benchState.err != nil {
		b.Fatalf("benchmark servers: %v", benchState.err)
	}
	// A passgate per benchmark function: startPassgate ties it to b.
	for _, t := range benchState.targets {
		t.passgate = startPassgate(b, passgateConfig{upstreams: []string{t.dovecot.IMAPAddr}, upstreamTLS: "none", binary: passgateBinary(b)})
		t.passgate.enforce(b, "alice")
		t.password = t.passgate.appPassword(b, "alice", "bench")
		t.nginx = startNginxMail(b, "alice", t.dovecot.Users["alice"], []nginxRoute{{"imap", t.dovecot.IMAPAddr}})
	}
	return benchState.targets
}

// benchSession is one login: where to dial and with what.
type benchSession struct {
	addr, user, password string
}

// benchColumn is one column of the IMAP benchmarks: a session and the
// proxy's process (0: none).
type benchColumn struct {
	name string
	s    benchSession
	pid  int
}

func (t *benchTarget) sessions() []benchColumn {
	return []benchColumn{
		{"direct", benchSession{t.dovecot.IMAPAddr, "alice", t.dovecot.Users["alice"]}, 0},
		{"nginx", benchSession{t.nginx.addrs[0], "alice", t.dovecot.Users["alice"]}, t.nginx.pid},
		{"passgate", benchSession{t.passgate.imapAddr, "alice", t.password}, t.passgate.proc.Process.Pid},
	}
}

// login opens a STARTTLS session with a fresh TLS configuration (no
// session resumption) and logs in.
func (s benchSession) login() (*imapclient.Client, error) {
	c, err := imapclient.DialStartTLS(s.addr, &imapclient.Options{TLSConfig: env.certs.ClientTLS()})
	if err != nil {
		return nil, fmt.Errorf("STARTTLS to %s: %w", s.addr, err)
	}
	if err := c.Login(s.user, s.password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("LOGIN at %s: %w", s.addr, err)
	}
	return c, nil
}

// ratios remembers the direct sub-benchmark's time per operation (and
// median, when measured) for the passgate one that follows it.
type ratios struct {
	direct, directMedian time.Duration
}

// report adds the ratio to direct of the mean time per operation and, when
// durations are given, their median ("median-ms", and "x-direct-median"),
// which a machine shared with other work disturbs less.
func (r *ratios) report(b *testing.B, name string, durations []time.Duration) {
	perOp := b.Elapsed() / time.Duration(b.N)
	var median time.Duration
	if len(durations) > 0 {
		slices.Sort(durations)
		median = durations[len(durations)/2]
		b.ReportMetric(float64(median)/float64(time.Millisecond), "median-ms")
	}
	if name == "direct" {
		r.direct, r.directMedian = perOp, median
		return
	}
	if r.direct > 0 {
		b.ReportMetric(float64(perOp)/float64(r.direct), "x-direct")
	}
	if r.directMedian > 0 && median > 0 {
		b.ReportMetric(float64(median)/float64(r.directMedian), "x-direct-median")
	}
}

func BenchmarkIMAPLogin(b *testing.B) {
	for _, t := range benchTargets(b) {
		var r ratios
		for _, sc := range t.sessions() {
			b.Run(t.name+"/"+sc.name, func(b *testing.B) {
				b.ReportAllocs()
				var durations []time.Duration
				hz := clockTicks()
				var cpu time.Duration
				for b.Loop() {
					var cpu0 time.Duration
					if sc.pid != 0 {
						cpu0 = cpuOfProcess(b, sc.pid, hz)
					}
					start := time.Now()
					c, err := sc.s.login()
					if err != nil {
						b.Fatal(err)
					}
					if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
						b.Fatalf("SELECT: %v", err)
					}
					if err := c.Logout().Wait(); err != nil {
						b.Fatalf("LOGOUT: %v", err)
					}
					c.Close()
					durations = append(durations, time.Since(start))
					if sc.pid != 0 {
						cpu += cpuOfProcess(b, sc.pid, hz) - cpu0
					}
				}
				if sc.pid != 0 {
					b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "proxy-cpu-us/login")
				}
				r.report(b, sc.name, durations)
			})
		}
	}
}

func BenchmarkIMAPFetch(b *testing.B) {
	for _, t := range benchTargets(b) {
		var r ratios
		for _, sc := range t.sessions() {
			b.Run(t.name+"/"+sc.name, func(b *testing.B) {
				c, err := sc.s.login()
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				sel, err := c.Select(benchBulkMailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
				if err != nil {
					b.Fatalf("SELECT %s: %v", benchBulkMailbox, err)
				}
				if sel.NumMessages != benchBulkMessages {
					b.Fatalf("%s holds %d messages, want %d", benchBulkMailbox, sel.NumMessages, benchBulkMessages)
				}
				b.SetBytes(t.bulk)
				b.ReportAllocs()
				for b.Loop() {
					if n := fetchAll(b, c); n != t.bulk {
						b.Fatalf("fetched %d bytes, want %d", n, t.bulk)
					}
				}
				r.report(b, sc.name, nil)
			})
		}
	}
}

// fetchAll fetches every message of the selected mailbox, streaming the
// bodies, and returns the number of body bytes.
func fetchAll(b *testing.B, c *imapclient.Client) int64 {
	var seq imap.SeqSet
	seq.AddRange(1, 0)
	cmd := c.Fetch(seq, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{Peek: true}}})
	var total int64
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		for item := msg.Next(); item != nil; item = msg.Next() {
			if body, ok := item.(imapclient.FetchItemDataBodySection); ok {
				n, err := io.Copy(io.Discard, body.Literal)
				if err != nil {
					b.Fatalf("FETCH body: %v", err)
				}
				total += n
			}
		}
	}
	if err := cmd.Close(); err != nil {
		b.Fatalf("FETCH: %v", err)
	}
	return total
}
