package smtpfront_test

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/proxy/smtpfront"
)

// TestLineLimitWhereLinesSplit: the line limit applies to the lines of
// commands and of DATA messages as they are split, not to what one
// network read brings: a BDAT chunk (which is not made of lines) that
// arrives in the same read as the end of a DATA message, or of a long
// command line, is not a long line; and command bytes that arrive in
// the same read as the end of a chunk are lines like any other.
func TestLineLimitWhereLinesSplit(t *testing.T) {
	chunk := strings.Repeat("y", 9000)
	pipelinedBDAT := "MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT 9000 LAST\r\n" + chunk
	tests := []struct {
		name    string
		limit   int
		before  []string // sent first, each answered with one reply that must start with 250 or 354
		writes  []string // then written, with a pause between writes
		replies []string // the prefixes of the replies that follow
	}{
		{name: "data-end-then-pipelined-bdat/one-write",
			before:  []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA"},
			writes:  []string{"Subject: one\r\n\r\nbody\r\n.\r\n" + pipelinedBDAT},
			replies: []string{"250 2.0.0 OK: queued", "250 ", "250 ", "250 2.0.0 OK: queued"}},
		{name: "data-end-then-pipelined-bdat/split",
			before:  []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA"},
			writes:  []string{"Subject: one\r\n\r\nbody\r\n.\r\n", pipelinedBDAT},
			replies: []string{"250 2.0.0 OK: queued", "250 ", "250 ", "250 2.0.0 OK: queued"}},
		{name: "long-command-then-bdat/one-write",
			before:  []string{"NOOP " + strings.Repeat("x", 8180), "MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>"},
			writes:  []string{"BDAT 9000 LAST\r\n" + chunk},
			replies: []string{"250 2.0.0 OK: queued"}},
		{name: "long-command-then-bdat/split",
			before:  []string{"NOOP " + strings.Repeat("x", 8180), "MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>"},
			writes:  []string{"BDAT 9000 LAST\r\n", chunk},
			replies: []string{"250 2.0.0 OK: queued"}},
		{name: "long-command-after-chunk-end/split", limit: 1024,
			before:  []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>"},
			writes:  []string{"BDAT 1 LAST\r\n", "x" + "NOOP " + strings.Repeat("a", 30000) + "\r\n"},
			replies: []string{"250 2.0.0 OK: queued", "500 5.4.0 Too long line, closing connection"}},
		{name: "long-command-after-chunk-end/one-write", limit: 1024,
			before:  []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>"},
			writes:  []string{"BDAT 1 LAST\r\nx" + "NOOP " + strings.Repeat("a", 30000) + "\r\n"},
			replies: []string{"250 2.0.0 OK: queued", "500 5.4.0 Too long line, closing connection"}},
		{name: "data-line-at-limit-after-long-read", limit: 100,
			before:  []string{"MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA"},
			writes:  []string{strings.Repeat("z", 98) + "\r\n" + strings.Repeat("w", 98) + "\r\n.\r\n"},
			replies: []string{"250 2.0.0 OK: queued"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *smtpfront.Options) {
				if tc.limit > 0 {
					o.MaxLineLength = tc.limit
				}
			})
			// In clear (TLS would cut the input in records of its own).
			f.dec.trusted = netip.MustParsePrefix("127.0.0.0/8")
			r := f.dialRaw(t, false)
			r.login()
			for _, l := range tc.before {
				r.send(l)
				if got := r.reply(); !strings.HasPrefix(got, "250 ") && !strings.HasPrefix(got, "354 ") {
					t.Fatalf("%.40q: %q", l, got)
				}
			}
			// A write may fail once the server has closed the connection
			// (too long a line): the replies tell.
			for i, w := range tc.writes {
				if i > 0 {
					time.Sleep(50 * time.Millisecond)
				}
				_, _ = io.WriteString(r.conn, w)
			}
			for _, want := range tc.replies {
				r.expect(want)
			}
		})
	}
}
