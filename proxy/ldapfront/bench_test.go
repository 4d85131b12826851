package ldapfront

import (
	"bufio"
	"net"
	"net/netip"
	"testing"

	"github.com/passgate/passgate/backends/ldapwire"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/policy/policytest"
	"github.com/passgate/passgate/proxy/revoke"
)

// BenchmarkBind measures the listener's own cost of an app-password bind
// (the real policy.Engine over an in-memory store, so that no database
// is counted), on one connection and with a new connection each:
//
//	go test ./proxy/ldapfront -run '^$' -bench Bind -cpuprofile cpu.out
func BenchmarkBind(b *testing.B) {
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
	srv, err := New(Options{Decider: eng, Upstream: &fakeUpstream{}, Registry: revoke.NewRegistry(), UserDNTemplates: []string{template}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	bind := func(nc net.Conn, br *bufio.Reader, id int64) {
		if _, err := nc.Write(encodeBind(id, aliceDN, alicePW)); err != nil {
			b.Fatal(err)
		}
		raw, err := ldapwire.ReadMessage(br, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		if m, err := ldapwire.ParseMessage(raw); err != nil || m.ID != id || len(m.Op.Content) < 3 || m.Op.Content[2] != resultSuccess {
			b.Fatalf("bind answered %x (%v)", raw, err)
		}
	}
	b.Run("one-conn", func(b *testing.B) {
		b.ReportAllocs()
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		br := bufio.NewReader(nc)
		for i := 0; i < b.N; i++ {
			bind(nc, br, int64(i+1))
		}
	})
	b.Run("new-conn", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			nc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			bind(nc, bufio.NewReader(nc), 1)
			nc.Close()
		}
	})
}
