package lifecycle

import (
	"context"
	"errors"
	"net"
	"regexp"
	"runtime"
	"testing"
	"time"
)

var errClosed = errors.New("test: closed")

// pc is a test connection: Run blocks until the peer or end closes it.
type pc struct{ nc net.Conn }

func loop() Loop[*pc] {
	return Loop[*pc]{
		Name: "test", Closed: errClosed,
		New: func(nc net.Conn) *pc { return &pc{nc} },
		Run: func(c *pc) { _, _ = c.nc.Read(make([]byte, 1)); c.nc.Close() },
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestServeShutdownClose: Serve returns Closed and closes its listener;
// Shutdown drains what its drain func ends and gives up at ctx; Close
// ends the rest; no goroutine outlives Close.
func TestServeShutdownClose(t *testing.T) {
	before := runtime.NumGoroutine()
	var s Set[*pc]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- Serve(&s, ln, loop()) }()
	var clients []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	waitFor(t, "3 connections", func() bool { return len(s.Live()) == 3 })

	// A drain that ends nothing: Shutdown gives up at ctx and leaves them.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := Drain(ctx, &s, 5*time.Millisecond, func(*pc) {}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain = %v, want the deadline", err)
	}
	if err := <-served; !errors.Is(err, errClosed) {
		t.Fatalf("Serve = %v, want Closed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("the listener is still open after Serve returned")
	}
	if len(s.Live()) != 3 {
		t.Fatalf("%d connections after a drain that ended none, want 3", len(s.Live()))
	}
	if err := Serve(&s, ln, loop()); !errors.Is(err, errClosed) {
		t.Fatalf("Serve after Stop = %v", err)
	}
	if s.Add(&pc{}) {
		t.Fatal("Add after Stop tracked a connection")
	}
	if err := Close(context.Background(), &s, func(c *pc) { c.nc.Close() }); err != nil {
		t.Fatal(err)
	}
	if len(s.Live()) != 0 {
		t.Fatalf("%d connections after Close", len(s.Live()))
	}
	for _, c := range clients {
		c.Close()
	}
	waitFor(t, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// TestDrainEndsWhatItCan: a drain func that closes connections lets
// Drain return nil once they are gone.
func TestDrainEndsWhatItCan(t *testing.T) {
	var s Set[*pc]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = Serve(&s, ln, loop()) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, "the connection", func() bool { return len(s.Live()) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Drain(ctx, &s, 5*time.Millisecond, func(c *pc) { c.nc.Close() }); err != nil {
		t.Fatalf("Drain = %v", err)
	}
}

// TestHandKeepsConnectionLive: a connection handed on by Loop.Hand stays
// live after Hand returns, until its done is called (once, from another
// goroutine, even twice); a panic of Hand ends it as a panic of Run does.
func TestHandKeepsConnectionLive(t *testing.T) {
	tests := []struct {
		name  string
		panic bool
	}{
		{"handed-on", false},
		{"panics", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s Set[*pc]
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			dones := make(chan func(), 1)
			panicked := make(chan any, 1)
			l := loop()
			l.Run = nil
			l.Hand = func(c *pc, done func()) {
				if tc.panic {
					panic("hand bug")
				}
				dones <- done // ended later, elsewhere
			}
			l.Panicked = func(c *pc, r any, _ []byte) {
				panicked <- r
				c.nc.Close()
			}
			served := make(chan error, 1)
			go func() { served <- Serve(&s, ln, l) }()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.panic {
				if r := <-panicked; r != "hand bug" {
					t.Errorf("Panicked got %v", r)
				}
				waitFor(t, "the connection to end", func() bool { return len(s.Live()) == 0 })
			} else {
				done := <-dones
				// Once the connection's goroutine has returned from
				// Hand and ended, the connection is still live.
				connGoroutine := regexp.MustCompile(`lifecycle\.Serve\[[^\n]*\]\.func`)
				waitFor(t, "the connection's goroutine to end", func() bool {
					buf := make([]byte, 1<<20)
					return !connGoroutine.Match(buf[:runtime.Stack(buf, true)])
				})
				if n := len(s.Live()); n != 1 {
					t.Fatalf("%d live connections after Hand returned, want 1 until done", n)
				}
				go func() {
					done()
					done()
				}()
				waitFor(t, "the connection to end", func() bool { return len(s.Live()) == 0 })
			}
			if err := Close(context.Background(), &s, func(c *pc) { c.nc.Close() }); err != nil {
				t.Fatal(err)
			}
			if err := <-served; !errors.Is(err, errClosed) {
				t.Fatalf("Serve = %v, want Closed", err)
			}
		})
	}
}
