package smtpfront_test

import (
	"io"
	"testing"
)

// TestRefusedDataThenNextMessage: when the upstream refuses the DATA
// command itself (Postfix's smtpd_data_restrictions), its transaction
// stays open; passgate must send RSET, so that the client's next message
// on the same connection is not refused as a nested MAIL.
func TestRefusedDataThenNextMessage(t *testing.T) {
	tests := []struct {
		name    string
		message string // the refused message, after the envelope
		rset    bool   // the client sends RSET before its next message
	}{
		{"data/next-mail", "DATA\r\n", false},
		{"data/rset-then-mail", "DATA\r\n", true},
		{"bdat/next-mail", "BDAT 5 LAST\r\nhello", false},
		{"bdat/rset-then-mail", "BDAT 5 LAST\r\nhello", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, u := newMTAFixture(t, nil)
			u.mu.Lock()
			u.refuseData = true
			u.mu.Unlock()
			r := f.dialRaw(t, true)
			r.login()
			r.envelope()
			if _, err := io.WriteString(r.conn, tc.message); err != nil {
				t.Fatal(err)
			}
			if tc.message == "DATA\r\n" {
				r.expect("354 ")
				r.send("Subject: one\r\n\r\nrefused\r\n.")
			}
			r.expect("554 5.7.1 <DATA>: Data command rejected")
			if tc.rset {
				r.send("RSET")
				r.expect("250 ")
			}
			r.startData()
			r.send("Subject: two\r\n\r\naccepted\r\n.")
			r.expect("250 2.0.0 OK: queued")
			r.send("QUIT")
			r.expect("221 ")
			if msgs := u.messages(); len(msgs) != 1 || msgs[0] != "Subject: two\r\n\r\naccepted\r\n" {
				t.Errorf("upstream messages %q, want the second one only", msgs)
			}
		})
	}
}
