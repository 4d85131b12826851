package integration

import (
	"bytes"
	"encoding/base64"
	"testing"
	"time"

	"github.com/passgate/passgate/backends/smtpupstream"
)

// TestSMTPReadyConnection: with ready upstream connections (as serve keeps
// one), logins through Postfix work whether the login takes a ready
// connection or opens its own, with STARTTLS and in plaintext upstream,
// and a refused login in between (which takes and closes a ready
// connection, unused) changes nothing for the next one.
func TestSMTPReadyConnection(t *testing.T) {
	e := smtpEnv(t)
	plain := postfixService(t, e, "smtpd_tls_security_level=none", "smtpd_tls_auth_only=no")
	tests := []struct {
		name string
		up   smtpupstream.Options
	}{
		{"starttls", xclientUpstream(e)},
		{"plaintext", smtpupstream.Options{Addresses: []string{plain}, TLS: smtpupstream.TLSNone,
			Login: smtpupstream.LoginXClient, ForwardClient: smtpupstream.ForwardXClient}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := tc.up
			up.Ready = 1
			p := startPassgateSMTP(t, smtpOpts{upstream: up})
			msg := testMessage("alice@example.test", "dave@example.test", "ready", 2<<10)
			send := func() {
				t.Helper()
				c, from := smtpBenchSession(t, p)
				defer c.Close()
				sendOne(t, c, from, bytes.NewReader(msg))
				if err := c.Quit(); err != nil {
					t.Fatalf("QUIT: %v", err)
				}
			}
			send() // opens its own connection; the next one gets ready meanwhile
			for i := range 3 {
				time.Sleep(100 * time.Millisecond) // time for the replacement to be opened
				if i == 1 {
					b := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00wrong-password"))
					if got, _ := smtpRawAuth(t, p, "127.0.0.1", "AUTH PLAIN "+b); got != "535 5.7.8 Authentication credentials invalid\r\n" {
						t.Fatalf("wrong secret: reply %q", got)
					}
					continue
				}
				send()
			}
		})
	}
}
