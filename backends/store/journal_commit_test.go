package store_test

import (
	"bytes"
	"github.com/passgate/passgate/backends/store"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// commitCutter relays TCP connections to PostgreSQL. Once armed, it lets
// the next COMMIT through and drops the connection instead of passing
// the database's answer back: the transaction is committed, and the
// client cannot know it (what a network failure or a failover at the
// wrong moment does). lib/pq sends COMMIT as a simple query ('Q', the
// text, a NUL), alone in its write.
type commitCutter struct {
	ln     net.Listener
	target string
	armed  atomic.Bool
	cut    chan struct{} // closed once a connection was cut after its COMMIT
	wg     sync.WaitGroup
}

func startCommitCutter(t *testing.T, target string) *commitCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &commitCutter{ln: ln, target: target, cut: make(chan struct{})}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(func() {
		ln.Close()
		c.wg.Wait()
	})
	return c
}

func (c *commitCutter) accept() {
	defer c.wg.Done()
	var conns sync.WaitGroup
	defer conns.Wait()
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", c.target)
		if err != nil {
			client.Close()
			continue
		}
		var sentCommit atomic.Bool
		end := sync.OnceFunc(func() { client.Close(); server.Close() })
		conns.Add(2)
		go func() { // client → server
			defer conns.Done()
			defer end()
			buf := make([]byte, 64<<10)
			for {
				n, err := client.Read(buf)
				if n > 0 {
					if c.armed.Load() && bytes.Contains(buf[:n], []byte("COMMIT\x00")) {
						sentCommit.Store(true) // before the database can answer
					}
					if _, werr := server.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // server → client
			defer conns.Done()
			defer end()
			buf := make([]byte, 64<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 && sentCommit.Load() && c.armed.CompareAndSwap(true, false) {
					close(c.cut) // the answer to COMMIT, dropped with the connection
					return
				}
				if n > 0 {
					if _, werr := client.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// TestJournalCommitWithoutAnswer: when the connection breaks after the
// audit batch's COMMIT reached PostgreSQL, the Journal cannot know
// whether the batch is stored; its retry finds the batch there and does
// not write it again, so that each login is in the trail exactly once,
// and nothing is reported lost.
func TestJournalCommitWithoutAnswer(t *testing.T) {
	f := newFixture(t, store.DriverPostgres)
	direct := f.migrated(t)
	ctx := ctxT(t)
	addUser(t, direct, "alice", store.MFAEnforced)

	u, err := url.Parse(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cutter := startCommitCutter(t, u.Host)
	u.Host = cutter.ln.Addr().String()
	opts := f.options()
	opts.DSN = u.String()
	s, err := store.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	j := store.NewJournal(s, slog.New(slog.NewTextHandler(&logs, nil)))
	t.Cleanup(func() { j.Close() })

	cutter.armed.Store(true)
	for i := range 3 {
		if err := j.Record(ctx, loginEvent("alice", "success", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cutter.cut:
	default:
		t.Fatalf("no COMMIT was cut: the test did not test it (log:\n%s)", logs.String())
	}
	if lost := j.Lost(); lost != 0 {
		t.Errorf("Lost %d after a commit that the database had made, want 0; log:\n%s", lost, logs.String())
	}
	evs, err := direct.Audit(ctx, store.AuditFilter{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, ev := range evs {
		seen[ev.Detail]++
	}
	for i := range 3 {
		if d := loginEvent("alice", "success", i).Detail; seen[d] != 1 {
			t.Errorf("event %s is in the trail %d times, want once (log:\n%s)", d, seen[d], logs.String())
		}
	}
	if !strings.Contains(logs.String(), "not written again") {
		t.Errorf("the log does not say that the batch was found committed:\n%s", logs.String())
	}
}
