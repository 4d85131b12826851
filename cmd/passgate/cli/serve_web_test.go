package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/backends/verify"
	"github.com/passgate/passgate/configs"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/portal"
)

type brokenVerifier struct{}

func (brokenVerifier) Verify(context.Context, string, string, netip.AddrPort) error {
	return errors.New("directory down")
}

// TestWebSignIn checks the portal's sign-in decision as serve wires it:
// the TLS step, disabled users, the verifier, the audit and the failure
// delay on every failure.
func TestWebSignIn(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: filepath.Join(dir, "s.db"), KeyFile: filepath.Join(dir, "s.key")})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for name, mfa := range map[string]store.MFAState{"Alice": store.MFAEnabled, "dora": store.MFADisabled} {
		if _, err := st.AddUser(ctx, name, mfa); err != nil {
			t.Fatal(err)
		}
		h, _ := verify.HashPassword(name + "-pw")
		if err := st.SetPasswordHash(ctx, name, h); err != nil {
			t.Fatal(err)
		}
	}
	const delay = 150 * time.Millisecond
	engine := policy.New(policy.Options{Store: st, FailureDelay: delay, TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	hashes, err := verify.NewHashes(hashSource{st})
	if err != nil {
		t.Fatal(err)
	}
	w := &webSignIn{engine: engine, verifier: hashes}
	local := netip.MustParseAddrPort("127.0.0.1:5000")
	far := netip.MustParseAddrPort("192.0.2.9:5000")
	for _, tc := range []struct {
		name       string
		a          portal.Attempt
		v          verify.Verifier
		wantUser   string
		wantRefuse bool
	}{
		{"ok/enabled-user", portal.Attempt{User: "alice", Password: "Alice-pw", Client: local}, nil, "Alice", false},
		{"ok/tls-from-anywhere", portal.Attempt{User: "alice", Password: "Alice-pw", Client: far, TLS: true}, nil, "Alice", false},
		{"fail/wrong-password", portal.Attempt{User: "alice", Password: "nope", Client: local}, nil, "", true},
		{"fail/disabled-user", portal.Attempt{User: "dora", Password: "dora-pw", Client: local}, nil, "", true},
		{"fail/unknown-user", portal.Attempt{User: "erin", Password: "x", Client: local}, nil, "", true},
		{"fail/plaintext-untrusted", portal.Attempt{User: "alice", Password: "Alice-pw", Client: far}, nil, "", true},
		{"fault/verifier-down", portal.Attempt{User: "alice", Password: "Alice-pw", Client: local}, brokenVerifier{}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w.verifier = hashes
			if tc.v != nil {
				w.verifier = tc.v
			}
			tc.a.Started = time.Now()
			acct, err := w.Password(ctx, tc.a)
			took := time.Since(tc.a.Started)
			switch {
			case tc.wantUser != "":
				if err != nil || acct.User != tc.wantUser {
					t.Fatalf("Password = %+v, %v; want %s", acct, err, tc.wantUser)
				}
			case tc.wantRefuse:
				if !errors.Is(err, portal.ErrRefused) {
					t.Fatalf("Password = %v, want ErrRefused", err)
				}
			default:
				if err == nil || errors.Is(err, portal.ErrRefused) {
					t.Fatalf("Password = %v, want a fault", err)
				}
			}
			if tc.wantUser == "" && took < delay {
				t.Fatalf("failure after %v, before the failure delay %v", took, delay)
			}
		})
	}
	a := portal.Attempt{User: "alice", Client: local, Started: time.Now()}
	if err := w.SecondFactor(ctx, a, func(context.Context) (bool, error) { return false, nil }); !errors.Is(err, portal.ErrRefused) {
		t.Fatalf("wrong second factor = %v", err)
	}
	if err := w.SecondFactor(ctx, a, func(context.Context) (bool, error) { return true, nil }); err != nil {
		t.Fatalf("right second factor = %v", err)
	}
	ev, err := st.Audit(ctx, store.AuditFilter{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for _, e := range ev {
		if e.Action == "login" && e.Actor[:4] == "web:" {
			outcomes[e.Outcome]++
		}
	}
	if outcomes["success"] != 3 || outcomes["failure"] != 3 || outcomes["unavailable"] != 1 {
		t.Fatalf("audit outcomes for alice = %v", outcomes)
	}
	if n := engine.InFlight(); n != 0 {
		t.Fatalf("%d logins left unfinished", n)
	}

	// The lockout counts portal sign-ins (proto web) like any login: past
	// the threshold even the right password is refused.
	locked := policy.New(policy.Options{Store: st, FailureDelay: -1, Lockout: policy.Lockout{MaxFailures: 2}})
	w = &webSignIn{engine: locked, verifier: hashes}
	from := netip.MustParseAddrPort("198.51.100.7:4000")
	for i, tc := range []struct {
		pw string
		ok bool
	}{{"x", false}, {"y", false}, {"Alice-pw", false}} {
		_, err := w.Password(ctx, portal.Attempt{User: "alice", Password: tc.pw, Client: from, TLS: true, Started: time.Now()})
		if (err == nil) != tc.ok {
			t.Fatalf("attempt %d: %v", i+1, err)
		}
	}
	if _, err := w.Password(ctx, portal.Attempt{User: "alice", Password: "Alice-pw", Client: local, TLS: true, Started: time.Now()}); err != nil {
		t.Fatalf("from another address: %v", err)
	}
}

// TestServePortalOnly: serve with web.listen and no protocol listener is
// a whole instance (the portal of a store that other instances serve the
// protocols from): it starts, answers the sign-in page and stops.
func TestServePortalOnly(t *testing.T) {
	dir := t.TempDir()
	yaml := "store:\n  dsn: " + filepath.Join(dir, "p.db") + "\nkey_file: " + filepath.Join(dir, "p.key") +
		"\nweb:\n  listen: 127.0.0.1:0\n  verify: store\n"
	cfg, err := configs.Parse([]byte(yaml), nil)
	if err != nil {
		t.Fatalf("a portal-only configuration is refused: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ready := make(chan map[string]string, 1)
	served := make(chan error, 1)
	e := &env{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }, Now: time.Now}
	go func() {
		served <- serve(ctx, e, cfg, log, &serveOverrides{ready: func(m map[string]string) { ready <- m }})
	}()
	var addrs map[string]string
	select {
	case addrs = <-ready:
	case err := <-served:
		t.Fatalf("serve with only web.listen: %v", err)
	}
	if len(addrs) != 1 || addrs["web"] == "" {
		t.Fatalf("listeners = %v, want the portal alone", addrs)
	}
	resp, err := http.Get("http://" + addrs["web"] + "/signin")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /signin = %s", resp.Status)
	}
	if resp.Header.Get("Strict-Transport-Security") != "" {
		t.Errorf("HSTS over plain HTTP: %q", resp.Header.Get("Strict-Transport-Security"))
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve after cancel: %v", err)
	}
	if !strings.Contains(logs.String(), "plain HTTP") {
		t.Errorf("no warning that the portal serves plain HTTP:\n%s", logs.String())
	}
}
