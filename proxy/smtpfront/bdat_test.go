package smtpfront_test

import (
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/smtpfront"
)

// TestBDATAbort: go-smtp always offers CHUNKING and runs Data for BDAT in
// a goroutine of its own; a client that sends BDAT chunks and then RSET,
// EHLO, QUIT or just goes away makes Reset or Logout run while that Data
// is still reading. Under -race this test fails if they share state
// unguarded or use the upstream from two goroutines. The aborted message
// must never be committed, and the session goes on: the next MAIL logs
// in to the upstream again instead of getting 421.
func TestBDATAbort(t *testing.T) {
	tests := []struct {
		name    string
		chunk   string // the first BDAT chunk, never LAST
		abort   string // client line after the chunk; "" closes the connection
		reply   string // reply to abort
		goesOn  bool   // the session carries on with a second message
		relogin bool   // that message needs a second upstream login
	}{
		{"rset", "Subject: a\r\n\r\n", "RSET", "250 ", true, true},
		{"ehlo", "Subject: a\r\n\r\n", "EHLO client.test", "250-", true, true},
		{"rset-after-empty-chunk", "", "RSET", "250 ", true, false},
		{"quit", "Subject: a\r\n\r\n", "QUIT", "221 ", false, false},
		{"disconnect", "Subject: a\r\n\r\n", "", "", false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			if tc.chunk != "" {
				f.up.dataStarted = make(chan struct{}, 4)
			}
			r := f.dialRaw(t, true)
			r.login()
			r.envelope()
			r.send("BDAT " + strconv.Itoa(len(tc.chunk)))
			if _, err := r.conn.Write([]byte(tc.chunk)); err != nil {
				t.Fatal(err)
			}
			r.expect("250 ")
			if tc.chunk != "" {
				select {
				case <-f.up.dataStarted: // DATA is open upstream and waits for the next chunk
				case <-time.After(patience):
					t.Fatal("Data did not start upstream")
				}
			}
			if tc.abort == "" {
				r.conn.Close()
			} else {
				r.send(tc.abort)
				r.expect(tc.reply)
			}
			if tc.goesOn {
				msg := "Subject: b\r\n\r\nbody\r\n"
				r.envelope()
				r.send("BDAT " + strconv.Itoa(len(msg)) + " LAST")
				if _, err := r.conn.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				r.expect("250 ")
				r.send("QUIT")
				r.expect("221 ")
				f.up.mu.Lock()
				defer f.up.mu.Unlock()
				if len(f.up.messages) != 1 || string(f.up.messages[0]) != msg {
					t.Fatalf("upstream messages %q, want only the second", f.up.messages)
				}
				if want := map[bool]int{true: 2, false: 1}[tc.relogin]; len(f.up.logins) != want {
					t.Fatalf("%d upstream logins, want %d (log %q)", len(f.up.logins), want, f.up.log)
				}
				return
			}
			// The server ends the session: wait until Logout has run.
			deadline := time.Now().Add(patience)
			for {
				f.up.mu.Lock()
				log := strings.Join(f.up.log, ",")
				n := len(f.up.messages)
				f.up.mu.Unlock()
				if n != 0 {
					t.Fatalf("an aborted message was committed: %s", log)
				}
				if strings.Contains(log, "DATA-ABORTED") && strings.Contains(log, "CLOSE") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("upstream not closed after the abort: %s", log)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestOversizeThenNextMessage: a message over SIZE is refused and its
// upstream connection closed (nothing committed); the next message of
// the session logs in again instead of getting 421.
func TestOversizeThenNextMessage(t *testing.T) {
	f := newFixture(t, func(o *smtpfront.Options) { o.MaxMessageBytes = 1000 })
	r := f.dialRaw(t, true)
	r.login()
	for i, size := range []int{1800, 10} {
		r.startData()
		r.send(strings.Repeat("y", size/2))
		r.send(strings.Repeat("y", size/2))
		r.send(".")
		if i == 0 {
			r.expect("552 ")
		} else {
			r.expect("250 ")
		}
	}
	r.send("QUIT")
	r.expect("221 ")
	f.up.mu.Lock()
	defer f.up.mu.Unlock()
	if len(f.up.messages) != 1 || len(f.up.messages[0]) != 14 {
		t.Fatalf("upstream messages %q, want only the small one", f.up.messages)
	}
	if len(f.up.logins) != 2 {
		t.Fatalf("%d upstream logins, want 2", len(f.up.logins))
	}
}

// TestMessageAtSizeLimit: a message of exactly SIZE bytes is accepted
// whether it comes with DATA or BDAT (RFC 1870: SIZE is the largest
// message the server accepts), and one byte more is refused with 552 by
// both, with nothing relayed.
func TestMessageAtSizeLimit(t *testing.T) {
	const limit = 1000
	for _, tc := range []struct {
		name  string
		bdat  bool
		size  int
		reply string
	}{
		{"data/exactly", false, limit, "250 "},
		{"data/one-over", false, limit + 1, "552 "},
		{"bdat/exactly", true, limit, "250 "},
		{"bdat/one-over", true, limit + 1, "552 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *smtpfront.Options) { o.MaxMessageBytes = limit })
			r := f.dialRaw(t, true)
			r.login()
			// Lines of 50 bytes with their CRLF, the last one cut to
			// make the size.
			line := strings.Repeat("z", 48) + "\r\n"
			msg := strings.Repeat(line, tc.size/len(line))
			if rest := tc.size - len(msg); rest >= 2 {
				msg += strings.Repeat("z", rest-2) + "\r\n"
			} else if rest == 1 {
				msg = msg[:len(msg)-len(line)] + "z" + line
			}
			if len(msg) != tc.size {
				t.Fatalf("test message of %d bytes, want %d", len(msg), tc.size)
			}
			r.envelope()
			if tc.bdat {
				r.send("BDAT " + strconv.Itoa(len(msg)) + " LAST")
				if _, err := r.conn.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
			} else {
				r.send("DATA")
				r.expect("354 ")
				if _, err := io.WriteString(r.conn, msg+".\r\n"); err != nil {
					t.Fatal(err)
				}
			}
			r.expect(tc.reply)
			r.send("QUIT")
			r.expect("221 ")
			f.up.mu.Lock()
			defer f.up.mu.Unlock()
			var relayed []int
			for _, m := range f.up.messages {
				relayed = append(relayed, len(m))
			}
			accepted := tc.reply == "250 "
			if accepted && (len(relayed) != 1 || relayed[0] != tc.size) || !accepted && len(relayed) != 0 {
				t.Fatalf("upstream got messages of %v bytes (reply %q)", relayed, tc.reply)
			}
		})
	}
}
