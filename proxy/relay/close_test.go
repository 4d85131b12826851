package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// waitForGoroutine waits until some goroutine's stack contains every one
// of frames.
func waitForGoroutine(t *testing.T, frames ...string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			all := true
			for _, f := range frames {
				all = all && strings.Contains(g, f)
			}
			if all {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no goroutine reached %q", frames)
}

// TestRunEndsWhileAWriteWaits ends a session (as a revocation does) while
// the copy to the upstream waits to write to an upstream that reads
// nothing: Run must still close both sides and return.
func TestRunEndsWhileAWriteWaits(t *testing.T) {
	for _, kind := range []string{"tcp", "waitable", "tls-framed"} {
		t.Run(kind, func(t *testing.T) {
			clientSide, clientApp, _ := sideOf(t, kind)
			upSide, upApp := pipePair(t)
			defer clientApp.Close()
			defer upApp.Close() // reads nothing
			ctx, cancel := context.WithCancel(context.Background())
			res := make(chan Stats, 1)
			go func() { res <- Run(ctx, clientSide, upSide, Options{Buffers: NewBuffers()}) }()
			go func() {
				chunk := make([]byte, 64<<10)
				for {
					if _, err := clientApp.Write(chunk); err != nil {
						return
					}
				}
			}()
			waitForGoroutine(t, "proxy/relay.(*direction).run", "internal/poll.(*pollDesc).waitWrite")
			cancel()
			select {
			case st := <-res:
				if st.EndedBy != "shutdown" {
					t.Errorf("EndedBy = %q, want shutdown", st.EndedBy)
				}
			case <-time.After(patience):
				t.Fatal("Run did not return after its context ended")
			}
		})
	}
}

// lineFramer is a Framer for line-based tests: a response ends at LF.
type lineFramer struct{}

func (lineFramer) Feed(p []byte) bool { return len(p) > 0 && p[len(p)-1] == '\n' }

// TestRunFarewellWhileUpstreamSpeaks ends a session while the copy to the
// client has read the upstream's next bytes and waits to write them
// behind the farewell: the client gets the farewell and nothing after
// it, and Run returns (the farewell's writer gives the lock back before
// it closes the sides, since the copy holds the upstream socket's read
// while it waits for the lock).
func TestRunFarewellWhileUpstreamSpeaks(t *testing.T) {
	for _, kind := range []string{"tcp", "tls-tcp"} {
		t.Run(kind, func(t *testing.T) {
			clientSide, clientApp := pipePair(t)
			upSide, upApp, _ := sideOf(t, kind)
			defer clientApp.Close()
			defer upApp.Close()
			ctx, cancel := context.WithCancel(context.Background())
			farewell := func(error) []byte {
				// While the farewell is under way, the upstream
				// speaks, and the copy to the client waits for the
				// farewell to be written.
				go upApp.Write([]byte("* 1 EXISTS\r\n"))
				waitForGoroutine(t, "proxy/relay.(*direction).run", "sync.(*Mutex).Lock")
				return []byte("* BYE bye\r\n")
			}
			res := make(chan Stats, 1)
			go func() {
				res <- Run(ctx, clientSide, upSide, Options{Buffers: NewBuffers(), Framer: lineFramer{}, Farewell: farewell})
			}()
			cancel()
			select {
			case <-res:
			case <-time.After(patience):
				t.Fatal("Run did not return after its context ended")
			}
			clientApp.SetReadDeadline(time.Now().Add(patience))
			got, err := io.ReadAll(clientApp)
			if err != nil && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("client read: %v", err)
			}
			if !bytes.Equal(got, []byte("* BYE bye\r\n")) {
				t.Errorf("client got %q, want the farewell alone", got)
			}
		})
	}
}

// panicFramer panics on the upstream's first bytes.
type panicFramer struct{}

func (panicFramer) Feed([]byte) bool { panic("framer bug") }

// TestRunPanicEndsOnlyItsRelay: a panic in a relay's goroutine (here the
// protocol's Framer) is handed to Options.Panicked with its stack and
// ends that relay, closing both sides and reporting its figures, instead
// of taking the process down.
func TestRunPanicEndsOnlyItsRelay(t *testing.T) {
	clientSide, clientApp := pipePair(t)
	upSide, upApp := pipePair(t)
	defer clientApp.Close()
	defer upApp.Close()
	panics := make(chan string, 2)
	res := make(chan Stats, 1)
	Start(context.Background(), clientSide, upSide, Options{
		Framer:   panicFramer{},
		Farewell: func(error) []byte { return nil },
		Panicked: func(v any, stack []byte) {
			panics <- fmt.Sprint(v) + "\n" + string(stack)
		},
	}, func(st Stats) { res <- st })
	if _, err := upApp.Write([]byte("* 1 EXISTS\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-panics:
		if !strings.HasPrefix(p, "framer bug\n") || !strings.Contains(p, "panicFramer") {
			t.Errorf("Panicked got %q, want the panic and its stack", p)
		}
	case <-time.After(patience):
		t.Fatal("the panic was not reported")
	}
	select {
	case <-res:
	case <-time.After(patience):
		t.Fatal("the relay did not end after its panic")
	}
	clientApp.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadAll(clientApp); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Errorf("the client's side was not closed: %v", err)
	}
	if len(panics) != 0 {
		t.Errorf("more than one panic reported: %q", <-panics)
	}
}
