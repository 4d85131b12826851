package integration

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/ldapupstream"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/ldapfront"
	"github.com/passgate/passgate/proxy/revoke"
)

// ldapServers is the slapd the LDAP tests share, started once per test
// binary by startLDAPEnv (from TestMain) or, failing that, by the first
// test that calls ldapEnv.
type ldapServers struct {
	dir   string
	certs *testenv.Certs
	slapd *testenv.Slapd
}

// ldapShared is test-only state: the one slapd of this test binary.
var ldapShared struct {
	once sync.Once
	env  *ldapServers
	err  error
	stop func()
}

// startLDAPEnv starts the slapd of the LDAP tests (once) and returns the
// function that stops it and removes its directory.
func startLDAPEnv() (stop func(), err error) {
	ldapShared.once.Do(func() {
		ldapShared.stop = func() {}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp("", "passgate-ldap-")
		if err != nil {
			ldapShared.err = err
			return
		}
		ldapShared.stop = func() { os.RemoveAll(dir) }
		certs, err := testenv.NewCerts(dir)
		if err != nil {
			ldapShared.err = err
			return
		}
		sl, err := testenv.StartSlapd(ctx, dir, certs)
		if err != nil {
			ldapShared.err = err
			return
		}
		ldapShared.stop = func() { sl.Stop(); os.RemoveAll(dir) }
		ldapShared.env = &ldapServers{dir: dir, certs: certs, slapd: sl}
	})
	return ldapShared.stop, ldapShared.err
}

// ldapEnv returns the shared slapd, starting it on first use. A slapd
// that cannot start fails the test.
func ldapEnv(t testing.TB) *ldapServers {
	t.Helper()
	if _, err := startLDAPEnv(); err != nil {
		t.Fatalf("start slapd for the LDAP tests: %v", err)
	}
	return ldapShared.env
}

// ldapGateOptions is what a test changes in the passgate it starts.
type ldapGateOptions struct {
	mode         ldapfront.Mode
	trusted      []netip.Prefix
	failureDelay time.Duration // 0: 200ms
	allowAnon    bool
	upstreamTLS  string // "" (none), "starttls", "ldaps"
	upstreamURL  string // "": the test slapd; else e.g. a port nothing listens on
	// decisionStore replaces the SQLite store under the decision (the
	// benchmark uses it to show the listener's own cost); the SQLite store
	// is still opened for the helpers.
	decisionStore policy.Store
	// postgresDSN, when set, puts the gate's store in that PostgreSQL
	// database instead of a SQLite file.
	postgresDSN string
	// writeTimeout is ldapfront's WriteTimeout (0: its default).
	writeTimeout time.Duration
}

// ldapGate is a passgate LDAP listener (plain with StartTLS, and LDAPS)
// assembled in-process from the same packages serve wires: a SQLite store,
// policy.Engine, ldapupstream and ldapfront.
type ldapGate struct {
	addr, tlsAddr string // host:port
	url, ldapsURL string
	store         *store.Store
	journal       *store.Journal // the decision's store, over store
	relays        *revoke.Registry
	delay         time.Duration
	apps          map[string]string   // "user/label" → app password
	servers       []*ldapfront.Server // plain (StartTLS) and LDAPS
}

func startLDAPGate(t testing.TB, o ldapGateOptions) *ldapGate {
	t.Helper()
	e := ldapEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	so := store.Options{Driver: store.DriverSQLite, DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")}
	if o.postgresDSN != "" {
		so.Driver, so.DSN = store.DriverPostgres, o.postgresDSN
	}
	st, err := store.Open(ctx, so)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if o.failureDelay == 0 {
		o.failureDelay = 200 * time.Millisecond
	}
	// The decision writes through a journal, as serve wires it.
	journal := store.NewJournal(st, nil)
	var decisionStore policy.Store = journal
	if o.decisionStore != nil {
		decisionStore = o.decisionStore
	}
	engine := policy.New(policy.Options{Store: decisionStore, TrustedNetworks: o.trusted, FailureDelay: o.failureDelay})
	upOpts := ldapupstream.Options{
		URL: e.slapd.URL, CAFile: e.certs.CAFile,
		ServiceDN: e.slapd.ServiceDN, ServicePassword: ldapupstream.Secret(e.slapd.ServicePassword),
	}
	switch o.upstreamTLS {
	case "starttls":
		upOpts.TLS = ldapupstream.TLSStartTLS
	case "ldaps":
		upOpts.URL = e.slapd.LDAPSURL
	}
	if o.upstreamURL != "" {
		upOpts.URL = o.upstreamURL
	}
	up, err := ldapupstream.New(upOpts)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := e.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	reg := revoke.NewRegistry()
	g := &ldapGate{store: st, journal: journal, relays: reg, delay: o.failureDelay, apps: map[string]string{}}
	base := ldapfront.Options{
		Decider: engine, Upstream: cli.LDAPUpstream(up), Registry: reg, TLSConfig: serverTLS,
		Mode: o.mode, UserDNTemplates: []string{e.slapd.UserTemplate}, UPNDomains: []string{"example.test"},
		AllowAnonymous: o.allowAnon, WriteTimeout: o.writeTimeout,
	}
	var servers []*ldapfront.Server
	for _, implicit := range []bool{false, true} {
		opts := base
		opts.ImplicitTLS = implicit
		srv, err := ldapfront.New(opts)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		servers = append(servers, srv)
		g.servers = append(g.servers, srv)
		if implicit {
			g.tlsAddr, g.ldapsURL = ln.Addr().String(), "ldaps://"+ln.Addr().String()
		} else {
			g.addr, g.url = ln.Addr().String(), "ldap://"+ln.Addr().String()
		}
	}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		exists := st.ExistingAppPasswords
		if o.decisionStore != nil {
			// The app passwords live in decisionStore, not in st.
			exists = func(_ context.Context, ids []int64) (map[int64]bool, error) {
				all := make(map[int64]bool, len(ids))
				for _, id := range ids {
					all[id] = true
				}
				return all, nil
			}
		}
		reg.Watch(ctx, 200*time.Millisecond, exists, nil)
	}()
	t.Cleanup(func() {
		for _, s := range servers {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			if err := s.Shutdown(sctx); err != nil {
				s.Close()
			}
			c()
		}
		cancel()
		<-watchDone
		up.Close()
		journal.Close() // flushes, then closes st
	})
	return g
}

// appPassword creates an app password for user with the given scopes (nil:
// all) and returns it.
func (g *ldapGate) appPassword(t testing.TB, user, label string, scopes ...string) string {
	t.Helper()
	_, secret, err := g.store.CreateAppPassword(context.Background(), store.NewAppPassword{User: user, Label: label, Scopes: scopes})
	if err != nil {
		t.Fatalf("create app password %s/%s: %v", user, label, err)
	}
	return strings.ReplaceAll(secret, " ", "")
}

func (g *ldapGate) setMFA(t testing.TB, user string, st store.MFAState) {
	t.Helper()
	if _, err := g.store.SetMFA(context.Background(), user, st); err != nil {
		t.Fatal(err)
	}
}
