package smtpfront_test

import (
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/smtpfront"
)

// TestMessageReadFailureReply: a message whose reading fails on the
// client's side (a stall, a line over the limit) gets the same fixed
// 451 4.4.2 before and after its first byte, then the connection
// closes; no reply carries an error's text (a timeout's names
// passgate's address), and nothing reaches the upstream's queue.
func TestMessageReadFailureReply(t *testing.T) {
	tests := []struct {
		name  string
		body  string // sent after the 354, without a line end of its own
		after string // the reply before the connection closes
	}{
		{"fail/stall-before-first-byte", "", "421 4.4.2 Idle timeout, bye bye\r\n"},
		{"fail/stall-after-first-byte", "Subject: stalled", "421 4.4.2 Idle timeout, bye bye\r\n"},
		{"fail/too-long-first-line", strings.Repeat("y", 100) + "\r\n.\r\n", "500 5.4.0 Too long line, closing connection\r\n"},
		{"fail/too-long-later-line", "ok\r\n" + strings.Repeat("y", 100) + "\r\n.\r\n", "500 5.4.0 Too long line, closing connection\r\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *smtpfront.Options) {
				o.ReadTimeout = 300 * time.Millisecond
				o.MaxLineLength = 80
			})
			r := f.dialRaw(t, true)
			r.login()
			r.startData()
			if _, err := r.conn.Write([]byte(tc.body)); err != nil {
				t.Fatal(err)
			}
			want := "451 4.4.2 Error reading the message, try again later\r\n" + tc.after
			if got := r.reply() + r.reply(); got != want {
				t.Fatalf("replies %q, want %q", got, want)
			}
			if _, err := r.r.ReadString('\n'); err == nil {
				t.Fatal("connection still open")
			}
			f.up.mu.Lock()
			defer f.up.mu.Unlock()
			if len(f.up.messages) != 0 {
				t.Fatalf("a failed message was committed: %q", f.up.messages)
			}
		})
	}
}
