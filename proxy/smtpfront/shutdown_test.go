package smtpfront_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestShutdownSays421: Shutdown answers every connection waiting for a
// command (before or after AUTH) "421 4.3.2 Server shutting down" and
// closes it; a session inside a message is left alone until the
// message's reply, and gets its 421 after it. Shutdown then returns
// without waiting for its deadline.
func TestShutdownSays421(t *testing.T) {
	tests := []struct {
		name      string
		auth      bool
		inMessage bool
	}{
		{"idle/before-auth", false, false},
		{"idle/after-auth", true, false},
		{"busy/inside-data", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := f.dialRaw(t, true)
			if tc.auth {
				r.login()
			}
			if tc.inMessage {
				r.startData()
				r.send("Subject: draining")
			}
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			shut := make(chan error, 1)
			go func() { shut <- f.srv.Shutdown(ctx) }()
			if tc.inMessage {
				// Nothing is said inside the message.
				_ = r.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
				if l, err := r.r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("inside a message at shutdown: %q, %v", l, err)
				}
				_ = r.conn.SetReadDeadline(time.Now().Add(patience))
				r.send("\r\nbody\r\n.")
				r.expect("250 2.0.0 OK: queued")
			}
			if got := r.reply(); got != "421 4.3.2 Server shutting down\r\n" {
				t.Fatalf("reply %q", got)
			}
			if rest, err := io.ReadAll(r.r); len(rest) != 0 || err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("after the 421: %q, %v", rest, err)
			}
			select {
			case err := <-shut:
				if err != nil {
					t.Fatalf("Shutdown: %v", err)
				}
			case <-time.After(patience):
				t.Fatal("Shutdown did not return")
			}
			if tc.inMessage {
				f.up.mu.Lock()
				n := len(f.up.messages)
				f.up.mu.Unlock()
				if n != 1 {
					t.Fatalf("%d messages reached the upstream, want 1", n)
				}
			}
		})
	}
}
