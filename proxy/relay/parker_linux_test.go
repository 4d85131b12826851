package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// relayGoroutines counts the goroutines that run a relay's direction.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "proxy/relay.(*direction).run")
}

// waitUntil waits, with patience, until cond holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited in vain for %s", what)
		}
	}
}

// expectEnd waits for a relay's figures, checks why it ended (any reason
// for "") and that nothing of it stays parked in pk.
func expectEnd(t *testing.T, pk *Parker, res <-chan Stats, endedBy string) {
	t.Helper()
	select {
	case st := <-res:
		if endedBy != "" && st.EndedBy != endedBy {
			t.Errorf("EndedBy = %q, want %s", st.EndedBy, endedBy)
		}
	case <-time.After(patience):
		t.Fatal("the relay did not end")
	}
	if n := pk.Parked(); n != 0 {
		t.Errorf("Parked = %d after the relay ended", n)
	}
}

// parkedRelay starts a relay between two loopback TCP connections on pk
// and waits until both its directions are parked; it returns the client's
// and the upstream's ends (closed at the test's end) and where the
// relay's figures go.
func parkedRelay(t *testing.T, pk *Parker) (clientApp, upApp net.Conn, res chan Stats) {
	t.Helper()
	clientSide, clientApp := pipePair(t)
	upSide, upApp := pipePair(t)
	t.Cleanup(func() {
		clientApp.Close()
		upApp.Close()
	})
	res = make(chan Stats, 1)
	Start(context.Background(), clientSide, upSide, Options{Parker: pk}, func(st Stats) { res <- st })
	waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
	return clientApp, upApp, res
}

func newTestParker(t *testing.T) *Parker {
	t.Helper()
	pk, err := NewParker(5 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pk.Close() })
	return pk
}

// TestParkedRelayHoldsNoGoroutine parks both directions of idle relays
// over every kind of side that can park, checks that no goroutine of the
// relay is left, then has each side speak several times (a parked
// direction wakes, relays, and parks again) and finally hangs up.
func TestParkedRelayHoldsNoGoroutine(t *testing.T) {
	tests := []struct{ client, upstream string }{
		{"tcp", "tcp"},
		{"tls-framed", "tcp"},
		{"tls-framed", "tls-tcp"},
		{"waitable", "tls-tcp"},
		{"prefix", "tcp"},
	}
	for _, tc := range tests {
		t.Run(tc.client+"/"+tc.upstream, func(t *testing.T) {
			pk := newTestParker(t)
			clientSide, clientApp, pending := sideOf(t, tc.client)
			upSide, upApp, _ := sideOf(t, tc.upstream)
			defer clientApp.Close()
			defer upApp.Close()
			res := make(chan Stats, 1)
			Start(context.Background(), clientSide, upSide, Options{Buffers: NewBuffers(), Parker: pk}, func(st Stats) { res <- st })
			if len(pending) > 0 {
				expectBytes(t, upApp, pending, "read-ahead")
			}
			for round := range 3 {
				waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
				if n := relayGoroutines(); n != 0 {
					t.Fatalf("round %d: %d goroutines of the relay while it is parked", round, n)
				}
				pk.mu.Lock()
				swept := len(pk.live)
				pk.mu.Unlock()
				if swept != 0 {
					t.Fatalf("round %d: the sweeper's round holds %d parked directions", round, swept)
				}
				up := []byte(strings.Repeat("a", 1+round*9000) + "\r\n")
				if _, err := clientApp.Write(up); err != nil {
					t.Fatal(err)
				}
				expectBytes(t, upApp, up, "client → upstream")
				down := []byte(strings.Repeat("b", 3+round*20000) + "\r\n")
				if _, err := upApp.Write(down); err != nil {
					t.Fatal(err)
				}
				expectBytes(t, clientApp, down, "upstream → client")
			}
			waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
			clientApp.Close()
			expectEnd(t, pk, res, "client")
		})
	}
}

// TestParkedRelayEndsWithContext ends a parked relay through its context
// (a revocation or a shutdown): the client gets the farewell and the
// relay reports why it ended.
func TestParkedRelayEndsWithContext(t *testing.T) {
	pk := newTestParker(t)
	clientSide, clientApp, _ := sideOf(t, "tls-framed")
	upSide, upApp := pipePair(t)
	defer clientApp.Close()
	defer upApp.Close()
	errBye := errors.New("revoked in test")
	ctx, cancel := context.WithCancelCause(context.Background())
	res := make(chan Stats, 1)
	Start(ctx, clientSide, upSide, Options{Parker: pk, Framer: lineFramer{}, Farewell: func(cause error) []byte {
		if !errors.Is(cause, errBye) {
			return []byte("* BYE wrong cause\r\n")
		}
		return []byte("* BYE bye\r\n")
	}}, func(st Stats) { res <- st })
	waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
	cancel(errBye)
	expectBytes(t, clientApp, []byte("* BYE bye\r\n"), "farewell")
	expectEnd(t, pk, res, "shutdown")
}

// TestParkerCloseHandsBack closes a Parker that holds a relay: the relay
// goes on in goroutines of its own, and no longer parks.
func TestParkerCloseHandsBack(t *testing.T) {
	pk, err := NewParker(5 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	clientApp, upApp, res := parkedRelay(t, pk)
	if err := pk.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "two goroutines again", func() bool { return relayGoroutines() == 2 })
	if _, err := clientApp.Write([]byte("x\r\n")); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, upApp, []byte("x\r\n"), "after Close")
	upApp.Close()
	expectEnd(t, pk, res, "upstream")
}

// TestParkRacesTraffic has both sides speak in bursts whose gaps are
// around the park time, so that parking, waking and the sweeper's
// requests meet the relay's reads in every order; every byte must arrive
// in order, and the relay must end when the client hangs up.
func TestParkRacesTraffic(t *testing.T) {
	for _, kind := range []string{"tcp", "tls-framed"} {
		t.Run(kind, func(t *testing.T) {
			pk, err := NewParker(time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			defer pk.Close()
			clientSide, clientApp, _ := sideOf(t, kind)
			upSide, upApp, _ := sideOf(t, "tls-tcp")
			defer clientApp.Close()
			defer upApp.Close()
			res := make(chan Stats, 1)
			Start(context.Background(), clientSide, upSide, Options{Buffers: NewBuffers(), Parker: pk}, func(st Stats) { res <- st })
			for i := range 200 {
				msg := []byte(strings.Repeat(string(rune('a'+i%26)), 1+i*37%5000) + "\r\n")
				if _, err := clientApp.Write(msg); err != nil {
					t.Fatal(err)
				}
				expectBytes(t, upApp, msg, "client → upstream")
				if _, err := upApp.Write(msg); err != nil {
					t.Fatal(err)
				}
				expectBytes(t, clientApp, msg, "upstream → client")
				time.Sleep(time.Duration(i%4) * time.Millisecond)
			}
			clientApp.Close()
			expectEnd(t, pk, res, "client")
		})
	}
}

// TestParkedRelayWakesDuringASweep holds the sweeper in the middle of a
// sweep (with a million sessions a sweep takes hundreds of milliseconds,
// every tick) and checks that a parked relay meanwhile wakes to relay
// its client's bytes, and ends with its context: neither may wait for
// the sweep to finish.
func TestParkedRelayWakesDuringASweep(t *testing.T) {
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	pk, err := NewParker(5 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	pk.sweepHook = func(int) {
		if hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	t.Cleanup(func() {
		close(release)
		pk.Close()
	})
	clientSide, clientApp := pipePair(t)
	upSide, upApp := pipePair(t)
	defer clientApp.Close()
	defer upApp.Close()
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan Stats, 1)
	Start(ctx, clientSide, upSide, Options{Parker: pk}, func(st Stats) { res <- st })
	waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
	// The sweeper's round holds only directions that are not parked: a
	// second relay, whose directions the sweeper walks past (it parks
	// them only after its walk), gives it one to be held in.
	otherClient, otherClientApp := pipePair(t)
	otherUp, otherUpApp := pipePair(t)
	defer otherClientApp.Close()
	defer otherUpApp.Close()
	hold.Store(true)
	Start(context.Background(), otherClient, otherUp, Options{Parker: pk}, func(Stats) {})
	<-held
	if _, err := clientApp.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, upApp, []byte("a NOOP\r\n"), "client → upstream while the sweeper sweeps")
	cancel()
	select {
	case <-res:
	case <-time.After(patience):
		t.Fatal("the parked relay did not end with its context while the sweeper swept")
	}
}

// TestParkNoSoonerThanParkAfter checks that a direction parks only once
// it has waited ParkAfter, counted in the sweeper's ticks (so that no
// timing of the test matters): a wait that begins in tick T has lasted
// parkAfter whole ticks from tick T+parkAfter+1 on. The tick read before
// a direction's wait begins is T or less; the one read after it has
// parked is the parking sweep's or more.
func TestParkNoSoonerThanParkAfter(t *testing.T) {
	pk, err := NewParker(300 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer pk.Close()
	check := func(what string, before uint32) {
		t.Helper()
		if n := pk.tick.Load() - before; n <= pk.parkAfter {
			t.Errorf("%s parked within %d ticks of the sweeper from the start of its wait, want more than %d (ParkAfter %v, a tick %v)", what, n, pk.parkAfter, 300*time.Millisecond, pk.every)
		}
	}
	clientSide, clientApp := pipePair(t)
	upSide, upApp := pipePair(t)
	defer clientApp.Close()
	defer upApp.Close()
	before := pk.tick.Load()
	Start(context.Background(), clientSide, upSide, Options{Parker: pk}, func(Stats) {})
	waitUntil(t, "a direction parked", func() bool { return pk.Parked() >= 1 })
	check("a direction", before)
	waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
	for round := range 3 {
		before := pk.tick.Load()
		if _, err := clientApp.Write([]byte("a NOOP\r\n")); err != nil {
			t.Fatal(err)
		}
		expectBytes(t, upApp, []byte("a NOOP\r\n"), "client → upstream")
		waitUntil(t, "the client's direction parked again", func() bool { return pk.Parked() == 2 })
		check(fmt.Sprintf("round %d: the client's direction", round), before)
	}
}

// TestStaleParkRequest holds the sweeper after it has found the client's
// direction due to park, and meanwhile has the client speak: the
// direction wakes, relays and begins a new wait, for which the sweep's
// finding is stale. It must wait ParkAfter again before it parks,
// counted in the sweeper's ticks (see TestParkNoSoonerThanParkAfter).
func TestStaleParkRequest(t *testing.T) {
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	pk, err := NewParker(300 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	pk.sweepHook = func(due int) {
		if due > 0 && hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
		pk.Close()
	})
	clientApp, upApp, _ := parkedRelay(t, pk)
	if _, err := clientApp.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, upApp, []byte("a NOOP\r\n"), "client → upstream")
	hold.Store(true) // the next sweep that finds the client's direction due holds
	<-held
	before := pk.tick.Load()
	if _, err := clientApp.Write([]byte("b NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	expectBytes(t, upApp, []byte("b NOOP\r\n"), "client → upstream while the sweeper holds")
	waitUntil(t, "the client's direction waiting again", func() bool {
		pk.liveMu.Lock()
		defer pk.liveMu.Unlock()
		for d := range pk.live {
			if d.name == "client" && d.wait.since.Load() != 0 {
				return true
			}
		}
		return false
	})
	released = true
	close(release)
	waitUntil(t, "both directions parked", func() bool { return pk.Parked() == 2 })
	if n := pk.tick.Load() - before; n <= pk.parkAfter {
		t.Errorf("the client's direction parked within %d ticks of the sweeper from the start of its new wait, want more than %d", n, pk.parkAfter)
	}
}

// TestPollerLostWakesParked: should the Parker's epoll instance fail
// (here it is closed under the poller), the parked directions go on in
// goroutines of their own instead of waiting for wake-ups that no one
// watches for, and nothing parks any more.
func TestPollerLostWakesParked(t *testing.T) {
	pk := newTestParker(t)
	clientApp, upApp, res := parkedRelay(t, pk)
	pk.poll.file.Close()
	waitUntil(t, "the directions back in goroutines", func() bool { return pk.Parked() == 0 && relayGoroutines() == 2 })
	for range 3 {
		if _, err := clientApp.Write([]byte("a NOOP\r\n")); err != nil {
			t.Fatal(err)
		}
		expectBytes(t, upApp, []byte("a NOOP\r\n"), "client → upstream")
		if _, err := upApp.Write([]byte("a OK\r\n")); err != nil {
			t.Fatal(err)
		}
		expectBytes(t, clientApp, []byte("a OK\r\n"), "upstream → client")
	}
	if n := pk.Parked(); n != 0 {
		t.Errorf("Parked = %d after the poller was lost", n)
	}
	clientApp.Close()
	expectEnd(t, pk, res, "client")
}
