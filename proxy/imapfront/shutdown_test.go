package imapfront

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/apppass"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
)

// The real decision engine is a Decider.
var _ lifecycle.Decider = (*policy.Engine)(nil)

func TestNewPanicsOnWiringBugs(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"no-decider", Options{Upstream: &fakeUpstream{}}},
		{"no-upstream", Options{Decider: newFakeDecider(t)}},
		{"implicit-without-tls", Options{Decider: newFakeDecider(t), Upstream: &fakeUpstream{}, ImplicitTLS: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("New did not panic")
				}
			}()
			New(tc.opts)
		})
	}
}

func TestShutdown(t *testing.T) {
	t.Run("bye-pre-login-drain-relay", func(t *testing.T) {
		ts := startServer(t, nil)
		pre, _ := ts.dial(t)
		relayed := ts.tlsClient(t)
		relayed.send("a LOGIN bob " + primaryPass + "\r\n")
		relayed.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")

		done := make(chan error, 1)
		go func() { done <- ts.srv.Shutdown(context.Background()) }()
		pre.expect("* BYE Server shutting down")
		pre.expectClosed()
		if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
			t.Error("listener still accepts after Shutdown")
		}
		// The relayed session goes on until the client leaves.
		relayed.send("b NOOP\r\n")
		relayed.expect("b OK NOOP done by upstream")
		select {
		case err := <-done:
			t.Fatalf("Shutdown returned %v while a session was live", err)
		case <-time.After(50 * time.Millisecond):
		}
		relayed.send("c LOGOUT\r\n")
		relayed.expect("* BYE upstream logging out", "c OK LOGOUT done by upstream")
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Shutdown = %v", err)
			}
		case <-time.After(patience):
			t.Fatal("Shutdown did not return after the last session ended")
		}
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Fatalf("Serve = %v", err)
			}
			ts.served <- err // for the cleanup's check
		case <-time.After(patience):
			t.Fatal("Serve did not return")
		}
	})
	t.Run("deadline-closes-relays", func(t *testing.T) {
		ts := startServer(t, nil)
		relayed := ts.tlsClient(t)
		relayed.send("a LOGIN bob " + primaryPass + "\r\n")
		relayed.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		// Between two responses: passgate says goodbye, then closes.
		relayed.expect("* BYE Server shutting down")
		relayed.expectClosed()
		waitFor(t, "session log", func() bool { return strings.Contains(ts.log.String(), `"ended":"shutdown"`) })
	})
	t.Run("deadline-inside-a-response-no-bye", func(t *testing.T) {
		ts := startServer(t, nil)
		// The upstream stops in the middle of a literal.
		ts.up.set(func(f *fakeUpstream) { f.extra = "* 1 FETCH (BODY[] {100}\r\npartial" })
		relayed := ts.tlsClient(t)
		relayed.send("a LOGIN bob " + primaryPass + "\r\n")
		relayed.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in", "* 1 FETCH (BODY[] {100}")
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
		}
		// A BYE here would be read as part of the message: none comes.
		relayed.c.SetReadDeadline(time.Now().Add(patience))
		rest, err := io.ReadAll(relayed.br)
		if string(rest) != "partial" || err != nil {
			t.Fatalf("after the shutdown: read %q, %v; want \"partial\" and then EOF", rest, err)
		}
	})
	t.Run("during-failure-delay", func(t *testing.T) {
		ts := startServer(t, nil)
		const delay = time.Hour // Shutdown must not wait it out
		ts.dec.set(func(f *fakeDecider) { f.delay = delay })
		rc := ts.tlsClient(t)
		rc.send("a LOGIN alice wrong\r\n")
		waitFor(t, "the attempt", func() bool { _, _, n := ts.dec.snapshot(); return n == 1 })
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := ts.srv.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
		rc.expect("* BYE Server shutting down")
		rc.expectClosed()
		if took := time.Since(start); took > patience {
			t.Errorf("Shutdown took %v", took)
		}
	})
}

// TestNoGoroutineOutlivesClose leaves connections in every state, closes
// the server and checks that Serve returned and every goroutine is gone.
func TestNoGoroutineOutlivesClose(t *testing.T) {
	tests := []struct {
		name string
		stop func(*Server) error
	}{
		{"close", (*Server).Close},
		{"shutdown-deadline", func(s *Server) error {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("Shutdown = %v, want DeadlineExceeded (a session was live)", err)
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { checkNoGoroutineOutlives(t, tc.stop, false) })
		// The relayed session idle long enough to be parked: it holds
		// no goroutine, and the stop must still end it.
		t.Run(tc.name+"-parked", func(t *testing.T) { checkNoGoroutineOutlives(t, tc.stop, true) })
	}
}

func checkNoGoroutineOutlives(t *testing.T, stop func(*Server) error, parked bool) {
	before := runtime.NumGoroutine()
	func() {
		ts := startServer(t, func(o *Options) { o.ParkAfter = time.Millisecond })
		ts.dec.set(func(f *fakeDecider) { f.delay = time.Minute })
		pre, _ := ts.dial(t)
		_ = pre
		half, err := net.Dial("tcp", ts.addr) // never reads the greeting
		if err != nil {
			t.Fatal(err)
		}
		defer half.Close()
		tlsPre := ts.tlsClient(t)
		_ = tlsPre
		failing := ts.tlsClient(t)
		failing.send("a LOGIN alice wrong\r\n")
		relayed := ts.tlsClient(t)
		relayed.send("a LOGIN alice \"" + appSecret + "\"\r\n")
		relayed.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
		waitFor(t, "the failing attempt", func() bool { _, _, n := ts.dec.snapshot(); return n == 1 })
		if parked {
			// The client's side (the fake upstream is a net.Pipe,
			// which does not park).
			waitFor(t, "the relayed session parked", func() bool { return ts.srv.Parked() == 1 })
		}

		if err := stop(ts.srv); err != nil {
			t.Fatal(err)
		}
		// When stop returns, every connection goroutine has finished its
		// work; those that have just signalled the WaitGroup may still be
		// on their way out for a moment, so look again for up to patience.
		var stacks string
		leaked := func() string {
			buf := make([]byte, 1<<20)
			stacks = string(buf[:runtime.Stack(buf, true)])
			for _, fn := range []string{"imapfront.(*Server).run", "imapfront.(*conn)", "relay.Run", "relay.(*direction)", "relay.(*Parker)", "relay.(*poller)"} {
				if strings.Contains(stacks, fn) {
					return fn
				}
			}
			return ""
		}
		for deadline := time.Now().Add(patience); leaked() != "" && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if fn := leaked(); fn != "" {
			t.Fatalf("a goroutine in %s outlived the server:\n%s", fn, stacks)
		}
		select {
		case err := <-ts.served:
			if !errors.Is(err, ErrServerClosed) {
				t.Fatalf("Serve = %v", err)
			}
			ts.served <- err
		case <-time.After(patience):
			t.Fatal("Serve did not return")
		}
		ts.up.wg.Wait()
		for _, rc := range []*rawClient{pre, tlsPre, failing, relayed} {
			rc.c.Close()
		}
	}()
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// fakeStore is an in-memory policy.Store: alice has one app password,
// every user is enforced.
type fakeStore struct {
	lookups atomic.Int64
}

// LoginState: every user is enforced; appUser has one app password.
func (s *fakeStore) LoginState(ctx context.Context, user, secret string) (store.LoginState, error) {
	s.lookups.Add(1)
	ls := store.LoginState{MFA: store.MFAEnforced, AllowAppPasswords: true}
	norm, _ := apppass.Normalize(secret)
	want, _ := apppass.Normalize(appSecret)
	if user == appUser && norm == want {
		ls.AppPassword = &store.AppPassword{ID: appID, User: appUser, Label: "phone", Scopes: []string{policy.IMAP.String()}}
	}
	return ls, nil
}

func (s *fakeStore) RecordLogin(context.Context, int64, store.Usage, store.AuditEvent) error {
	return nil
}
func (s *fakeStore) Record(ctx context.Context, ev store.AuditEvent) error { return nil }

// TestBadLoginsDoNotDelayGoodOne runs 100 failing logins (failure delay
// 20 s, real policy.Engine) and one good login at the same time: the good
// one must not wait behind the failures, so it is answered before any of
// them. The delay leaves a busy machine plenty of time for that: the
// first failure's delay begins before the others' lookups, and under the
// race detector with both cores taken those took seconds.
func TestBadLoginsDoNotDelayGoodOne(t *testing.T) {
	const delay = 20 * time.Second
	st := &fakeStore{}
	engine := policy.New(policy.Options{
		Store:           st,
		TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		FailureDelay:    delay,
	})
	ts := startServer(t, func(o *Options) {
		o.Decider = engine
		o.Logger = slog.New(slog.DiscardHandler)
	})
	good, _ := ts.dial(t)

	const bad = 100
	var wg sync.WaitGroup
	var replied atomic.Int64 // failures answered
	errs := make(chan error, bad)
	for i := 0; i < bad; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- badLogin(ts.addr, i, delay, &replied)
		}(i)
	}
	waitFor(t, "100 pending failures", func() bool { return st.lookups.Load() >= bad })
	start := time.Now()
	good.send("g LOGIN alice \"" + appSecret + "\"\r\n")
	good.expect("g OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	took := time.Since(start)
	answered := replied.Load()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if answered != 0 {
		t.Fatalf("good login (%v) answered after %d of the 100 failures (failure delay %v)", took, answered, delay)
	}
	t.Logf("good login took %v while 100 failures waited %v", took, delay)
}

func badLogin(addr string, i int, delay time.Duration, replied *atomic.Int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(patience))
	buf := make([]byte, 512)
	if _, err := c.Read(buf); err != nil {
		return fmt.Errorf("bad %d: greeting: %w", i, err)
	}
	start := time.Now()
	if _, err := fmt.Fprintf(c, "b%d LOGIN mallory%d wrong\r\n", i, i); err != nil {
		return err
	}
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("bad %d: reply: %w", i, err)
	}
	replied.Add(1)
	if got, want := string(buf[:n]), fmt.Sprintf("b%d %s\r\n", i, failLine); got != want {
		return fmt.Errorf("bad %d: reply %q, want %q", i, got, want)
	}
	if took := time.Since(start); took < delay-10*time.Millisecond {
		return fmt.Errorf("bad %d: failed after %v, before the delay", i, took)
	}
	return nil
}

// flakyListener fails its first Accept with err.
type flakyListener struct {
	net.Listener
	err    error
	failed atomic.Bool
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if !l.failed.Swap(true) {
		return nil, l.err
	}
	return l.Listener.Accept()
}

func TestServeAcceptErrors(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	tests := []struct {
		name       string
		err        error
		keepsGoing bool
	}{
		{"retry/emfile", emfile, true},
		{"fail/permanent", errors.New("listener broke"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := New(Options{Decider: newFakeDecider(t), Upstream: &fakeUpstream{}})
			served := make(chan error, 1)
			go func() { served <- srv.Serve(&flakyListener{Listener: ln, err: tc.err}) }()
			defer srv.Close()
			if !tc.keepsGoing {
				select {
				case err := <-served:
					if err == nil || errors.Is(err, ErrServerClosed) || !strings.Contains(err.Error(), "listener broke") {
						t.Fatalf("Serve = %v", err)
					}
				case <-time.After(patience):
					t.Fatal("Serve did not return")
				}
				return
			}
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rc := &rawClient{t: t, c: c, br: bufio.NewReader(c)}
			if g := rc.line(); !strings.HasPrefix(g, "* OK ") {
				t.Fatalf("greeting %q", g)
			}
			srv.Close()
			if err := <-served; !errors.Is(err, ErrServerClosed) {
				t.Fatalf("Serve = %v", err)
			}
		})
	}
}
