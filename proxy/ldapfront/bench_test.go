package ldapfront

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/passgate/passgate/backends/ldapwire"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/policytest"
	"github.com/passgate/passgate/proxy/revoke"
)

// benchUpstream is a directory for BenchmarkRelaySearch: every session
// answers each request with one entry and a result from a reader
// goroutine of its own, then goes idle, as backends/ldapupstream's
// session does, allocating nothing per request itself.
type benchUpstream struct{}

func (benchUpstream) Open(context.Context) (Session, error) {
	s := &benchSession{requests: make(chan func([]byte, []byte, bool, error), 1), done: make(chan struct{})}
	go s.reader()
	return s, nil
}
func (benchUpstream) Verify(context.Context, string, []byte) (string, bool, error) {
	return "", false, nil
}
func (benchUpstream) Resolve(context.Context, string) (string, bool, error) { return "", false, nil }
func (benchUpstream) HasServiceAccount() bool                               { return true }

type benchSession struct {
	requests  chan func([]byte, []byte, bool, error)
	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	onIdle    func()
	next      int64
}

// entry and result are a search's answers, encoded once.
var (
	benchEntry  = []byte{0x64, 0x2c, 0x04, 0x26, 'u', 'i', 'd', '=', 'a', 'l', 'i', 'c', 'e', ',', 'o', 'u', '=', 'p', 'e', 'o', 'p', 'l', 'e', ',', 'd', 'c', '=', 'e', 'x', 'a', 'm', 'p', 'l', 'e', ',', 'd', 'c', '=', 't', 'e', 's', 't', 0x30, 0x02, 0x30, 0x00}
	benchResult = []byte{0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00}
)

func (s *benchSession) reader() {
	for {
		select {
		case fn := <-s.requests:
			fn(benchEntry, nil, false, nil)
			fn(benchResult, nil, true, nil)
			s.mu.Lock()
			idle := s.onIdle
			s.mu.Unlock()
			if idle != nil {
				idle()
			}
		case <-s.done:
			return
		}
	}
}

func (s *benchSession) Bind(context.Context, string, []byte) (bool, error) { return true, nil }
func (s *benchSession) BindService(context.Context) error                  { return nil }
func (s *benchSession) Err() error                                         { return nil }
func (s *benchSession) Abandon(int64) error                                { return nil }
func (s *benchSession) OnIdle(fn func()) {
	s.mu.Lock()
	s.onIdle = fn
	s.mu.Unlock()
}
func (s *benchSession) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return nil
}
func (s *benchSession) Send(_, _ []byte, _ string, fn func([]byte, []byte, bool, error)) (int64, error) {
	s.mu.Lock()
	s.next++
	h := s.next
	s.mu.Unlock()
	s.requests <- fn
	return h, nil
}

// BenchmarkRelaySearch measures the listener's own cost of relaying a
// search after an app-password bind: the client's request read, checked
// and handed to the session with the proxied authorization identity, the
// entry and the result written back under the client's message ID. The
// directory is benchUpstream, in memory; allocs/op counts the listener's
// allocations (the client side here allocates nothing per search).
//
//	go test ./proxy/ldapfront -run '^$' -bench RelaySearch -benchmem
func BenchmarkRelaySearch(b *testing.B) {
	nc, err := net.Dial("tcp", benchListener(b, benchUpstream{}))
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	br := bufio.NewReader(nc)
	benchBind(b, nc, br, 1)
	search := encodeSearch(2, aliceDN, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nc.Write(search); err != nil {
			b.Fatal(err)
		}
		for _, want := range []int{opSearchEntry, opSearchDone} {
			raw, err := ldapwire.ReadMessageShared(br, 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			if m, err := ldapwire.ParseMessage(raw); err != nil || m.ID != 2 || m.Op.Tag != want {
				b.Fatalf("answer % x (%v), want tag %d", raw, err, want)
			}
		}
	}
}

// BenchmarkBind measures the listener's own cost of an app-password bind
// (the real policy.Engine over an in-memory store, so that no database
// is counted), on one connection and with a new connection each:
//
//	go test ./proxy/ldapfront -run '^$' -bench Bind -cpuprofile cpu.out
func BenchmarkBind(b *testing.B) {
	addr := benchListener(b, &fakeUpstream{})
	b.Run("one-conn", func(b *testing.B) {
		b.ReportAllocs()
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		br := bufio.NewReader(nc)
		for i := 0; i < b.N; i++ {
			benchBind(b, nc, br, int64(i+1))
		}
	})
	b.Run("new-conn", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			benchBind(b, nc, bufio.NewReader(nc), 1)
			nc.Close()
		}
	})
}

// benchListener serves the listener on a loopback port in front of up,
// deciding with the real policy.Engine over an in-memory store in which
// alice's app password is alicePW, and returns its address.
func benchListener(b *testing.B, up Upstream) string {
	eng := policytest.NewEngines(b).New(policy.Options{
		Store: policytest.Store{State: func(user, secret string) (store.LoginState, error) {
			ls := store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}
			if secret == alicePW {
				ls.AppPassword = policytest.App(9, "alice", "bench")
			}
			return ls, nil
		}},
		TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	srv, err := New(Options{Decider: eng, Upstream: up, Registry: revoke.NewRegistry(), UserDNTemplates: []string{template}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// benchBind binds as alice with her app password under message ID id and
// fails the benchmark unless the bind succeeds.
func benchBind(b *testing.B, nc net.Conn, br *bufio.Reader, id int64) {
	if _, err := nc.Write(encodeBind(id, aliceDN, alicePW)); err != nil {
		b.Fatal(err)
	}
	raw, err := ldapwire.ReadMessage(br, 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	if m, err := ldapwire.ParseMessage(raw); err != nil || m.ID != id || len(m.Op.Content) < 3 || m.Op.Content[2] != resultSuccess {
		b.Fatalf("bind answered % x (%v)", raw, err)
	}
}
