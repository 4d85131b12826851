package store_test

import (
	"bytes"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/passgate/passgate/backends/store"
)

// commitCutter relays TCP connections to PostgreSQL. Once armed, it
// breaks the connection of the next COMMIT: after the database has
// answered it, dropping the answer (the transaction is committed and
// the client cannot know it: a network failure or a failover at the
// wrong moment), or, with dropCommit, before the COMMIT reaches the
// database (nothing is committed). lib/pq sends COMMIT as a simple
// query ('Q', the text, a NUL), alone in its write.
type commitCutter struct {
	ln         net.Listener
	target     string
	dropCommit bool
	armed      atomic.Bool
	cut        chan struct{} // closed once a connection was broken at its COMMIT
	wg         sync.WaitGroup
}

func startCommitCutter(t *testing.T, target string, dropCommit bool) *commitCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &commitCutter{ln: ln, target: target, dropCommit: dropCommit, cut: make(chan struct{})}
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
				if n > 0 && c.armed.Load() && bytes.Contains(buf[:n], []byte("COMMIT\x00")) {
					if c.dropCommit {
						if c.armed.CompareAndSwap(true, false) {
							close(c.cut)
							return // the COMMIT is not sent
						}
					} else {
						sentCommit.Store(true) // before the database can answer
					}
				}
				if n > 0 {
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
					close(c.cut)
					return // the answer to COMMIT is not passed on
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

// TestJournalCommitWithoutAnswer: when the connection to PostgreSQL
// breaks at an audit batch's COMMIT, the Journal cannot know whether the
// batch is stored. Its retry looks for the batch first: one that the
// database committed is not written again, one that it did not is; either
// way each login is in the trail exactly once, nothing is reported lost,
// and the log says which it was.
func TestJournalCommitWithoutAnswer(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dropCommit bool
		log        string
	}{
		{"answer-lost", false, "not written again"},
		{"commit-lost", true, "writing again a batch whose commit failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, store.DriverPostgres)
			direct := f.migrated(t)
			ctx := ctxT(t)
			addUser(t, direct, "alice", store.MFAEnforced)
			app, _ := create(t, direct, "alice", "phone")

			u, err := url.Parse(f.dsn)
			if err != nil {
				t.Fatal(err)
			}
			cutter := startCommitCutter(t, u.Host, tc.dropCommit)
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
			// Two unstructured events and a structured app-password
			// login (port 40002), whose look matches on every column.
			for i := range 2 {
				if err := j.Record(ctx, loginEvent("alice", "success", i)); err != nil {
					t.Fatal(err)
				}
			}
			login := store.AuditEvent{Action: store.ActionLogin, Subject: "alice", Outcome: "success",
				Protocol: "imap", ClientAddr: "192.0.2.7", ClientPort: 40002, TLS: true, ClientName: "Outlook",
				Credential: store.CredentialAppPassword, AppPasswordID: app.ID, Label: "phone", Reason: "app password matched"}
			if err := j.RecordLogin(ctx, app.ID, store.Usage{Addr: "192.0.2.7:40002", Proto: "imap"}, login); err != nil {
				t.Fatal(err)
			}
			if err := j.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case <-cutter.cut:
			default:
				t.Fatalf("no connection was broken at a COMMIT: the test did not test it (log:\n%s)", logs.String())
			}
			if lost := j.Lost(); lost != 0 {
				t.Errorf("Lost %d, want 0: the retry stores what the broken commit did not; log:\n%s", lost, logs.String())
			}
			evs, err := direct.Audit(ctx, store.AuditFilter{User: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for _, ev := range evs {
				if ev.ClientPort == 40002 {
					seen["port 40002"]++
				} else if ev.Action == store.ActionLogin {
					seen[ev.Detail]++
				}
			}
			want := []string{loginEvent("alice", "", 0).Detail, loginEvent("alice", "", 1).Detail, "port 40002"}
			for _, w := range want {
				if seen[w] != 1 {
					t.Errorf("event %s is in the trail %d times, want once (log:\n%s)", w, seen[w], logs.String())
				}
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("the log does not say %q:\n%s", tc.log, logs.String())
			}
		})
	}
}
