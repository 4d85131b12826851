package integration

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
)

// benchStore is an in-memory policy.Store with one app password.
type benchStore struct{ user, secret string }

func (m *benchStore) LoginState(_ context.Context, user, secret string) (store.LoginState, error) {
	if user != m.user {
		return store.LoginState{MFA: store.MFADisabled, AllowAppPasswords: true}, nil
	}
	ls := store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}
	if subtle.ConstantTimeCompare([]byte(secret), []byte(m.secret)) == 1 {
		ls.AppPassword = &store.AppPassword{ID: 1, User: user, Label: "bench", Scopes: []string{"ldap"}}
	}
	return ls, nil
}

func (m *benchStore) RecordLogin(context.Context, int64, store.Usage, store.AuditEvent) error {
	return nil
}
func (m *benchStore) Record(context.Context, store.AuditEvent) error { return nil }

// benchLDAPAlice starts the LDAP benchmarks' passgate (in process,
// plaintext trusted from loopback), enforces MFA for alice and gives her
// an app password labelled label; it returns the servers, the gate, the
// app password and alice's DN.
func benchLDAPAlice(b *testing.B, label string) (*ldapServers, *ldapGate, string, string) {
	e := ldapEnv(b)
	g := startLDAPGate(b, ldapGateOptions{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	g.setMFA(b, "alice", store.MFAEnforced)
	return e, g, g.appPassword(b, "alice", label), e.slapd.UserDN("alice")
}

// BenchmarkLDAPBind measures simple binds per second through passgate
// (relay mode, SQLite store — PostgreSQL for the "postgres" rows —,
// plaintext from a trusted network) and
// directly to slapd, side by side in one run: a new connection per bind,
// and many binds on one connection. Through passgate, an app password is
// checked by passgate alone (the directory is not asked); a primary
// password of an account without MFA is checked by slapd behind passgate
// ("app-account": cn=wiki, a DN outside the templates, which costs a WhoAmI
// more to rule out another spelling of a person's DN; "person": bob, a
// templated DN with a plain user name).
// The closing log line gives each passgate figure as a ratio of direct.
//
//	go test ./integration -run '^$' -bench LDAPBind -benchtime 3s
func BenchmarkLDAPBind(b *testing.B) {
	e, g, app, aliceDN := benchLDAPAlice(b, "bench")

	rates := map[string]float64{}
	run := func(name, url, dn, pw string, newConn bool) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var l *ldap.Conn
			var err error
			if !newConn {
				if l, err = ldap.DialURL(url); err != nil {
					b.Fatal(err)
				}
				defer l.Close()
			}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if newConn {
					if l, err = ldap.DialURL(url); err != nil {
						b.Fatal(err)
					}
				}
				if err := l.Bind(dn, pw); err != nil {
					b.Fatal(err)
				}
				if newConn {
					l.Close()
				}
			}
			rate := float64(b.N) / time.Since(start).Seconds()
			b.ReportMetric(rate, "binds/s")
			rates[name] = rate
		})
	}
	// The same listener over an in-memory store: the listener's and the
	// upstream's own cost, without SQLite's commits of the audit row and
	// the app password's last use.
	mem := &benchStore{user: "alice", secret: "benchbenchbenchb"}
	gm := startLDAPGate(b, ldapGateOptions{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, decisionStore: mem})
	// The same over PostgreSQL (the test cluster runs with fsync off).
	gp := startLDAPGate(b, ldapGateOptions{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, postgresDSN: benchPostgres(b)})
	gp.setMFA(b, "alice", store.MFAEnforced)
	appPG := gp.appPassword(b, "alice", "bench")

	for _, mode := range []struct {
		name    string
		newConn bool
	}{{"new-conn", true}, {"one-conn", false}} {
		run(mode.name+"/direct", e.slapd.URL, e.slapd.AppDN, e.slapd.AppPassword, mode.newConn)
		run(mode.name+"/passgate-app-password", g.url, aliceDN, app, mode.newConn)
		run(mode.name+"/passgate-primary-app-account", g.url, e.slapd.AppDN, e.slapd.AppPassword, mode.newConn)
		run(mode.name+"/passgate-primary-person", g.url, e.slapd.UserDN("bob"), e.slapd.Users["bob"], mode.newConn)
		run(mode.name+"/passgate-postgres-app-password", gp.url, aliceDN, appPG, mode.newConn)
		run(mode.name+"/passgate-memstore-app-password", gm.url, aliceDN, mem.secret, mode.newConn)
		run(mode.name+"/passgate-memstore-primary-app-account", gm.url, e.slapd.AppDN, e.slapd.AppPassword, mode.newConn)
		run(mode.name+"/passgate-memstore-primary-person", gm.url, e.slapd.UserDN("bob"), e.slapd.Users["bob"], mode.newConn)
	}

	names := make([]string, 0, len(rates))
	for n := range rates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		direct := rates[n[:len("new-conn")]+"/direct"]
		if direct > 0 {
			b.Logf("%-32s %8.0f binds/s  %.2f× direct", n, rates[n], rates[n]/direct)
		}
	}
}

// benchPostgres returns the DSN of a new database in the test cluster
// ($PASSGATE_TEST_POSTGRES, or one started here), dropped at the end.
func benchPostgres(b *testing.B) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, stop, err := testenv.Postgres(ctx)
	if err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("passgate_bench_%d_%d", os.Getpid(), time.Now().UnixNano())
	dsn, err := testenv.CreateDatabase(ctx, base, name)
	if err != nil {
		stop()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := testenv.DropDatabase(ctx, base, name); err != nil {
			b.Error(err)
		}
		stop()
	})
	return dsn
}
