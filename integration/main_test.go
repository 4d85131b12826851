package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// servers are the throwaway servers that TestMain starts once for the
// whole test binary. Tests read them and never stop them (a test that needs
// a server stopped starts its own).
type servers struct {
	dir     string // temporary directory holding every server's files
	certs   *testenv.Certs
	dovecot *testenv.Dovecot
}

// env is test-only state shared by every test of this binary, set by
// TestMain before any test runs.
var env servers

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	stop, err := startServers()
	defer stop()
	defer stopBenchServers()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: start servers:", err)
		return 1
	}
	code := m.Run()
	stopLazy()
	return code
}

// stopLazy stops the servers that tests started on first use.
func stopLazy() {
	if smtpState.stop != nil {
		smtpState.stop()
	}
	if ldapShared.stop != nil {
		ldapShared.stop()
	}
	if browserState.stop != nil {
		browserState.stop()
	}
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

// startServers starts every server the tests need. To add one, start it
// here and add its stop to stops.
func startServers() (stop func(), err error) {
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("", "passgate-integration-")
	if err != nil {
		return stop, err
	}
	// The directory must be traversable by the servers' unprivileged users.
	if err := os.Chmod(dir, 0o755); err != nil {
		return stop, err
	}
	stops = append(stops, func() { _ = os.RemoveAll(dir) })
	env.dir = dir
	if env.certs, err = testenv.NewCerts(dir); err != nil {
		return stop, err
	}

	dovecotDir := filepath.Join(dir, "dovecot")
	if err := os.Mkdir(dovecotDir, 0o755); err != nil {
		return stop, err
	}
	if env.dovecot, err = testenv.StartDovecot(ctx, dovecotDir, env.certs); err != nil {
		return stop, err
	}
	stops = append(stops, env.dovecot.Stop)
	return stop, nil
}

// eventually calls cond every 50 ms until it returns true or timeout
// passes, and reports whether it did: for what another process commits
// in the background (the audit trail, last use).
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
