package smtpfront_test

import (
	"strings"
	"testing"
)

// TestPathRelayedAsOnePath checks the MAIL and RCPT lines the upstream
// receives (through smtpupstream, go-smtp's client, which writes the
// path between "<" and ">" as it gets it): a quoted local part is quoted
// again, so that what it holds never becomes parameters of passgate's
// command (an AUTH= the session drops on purpose, NOTIFY or ORCPT the
// front refuses), and a path with a control byte, or a domain with a
// delimiter, is refused with 501 without ending the session.
func TestPathRelayedAsOnePath(t *testing.T) {
	tests := []struct {
		name, cmd string
		reply     string // prefix of the client's reply
		upstream  string // the line the upstream gets; "" none
	}{
		{"ok/plain", "MAIL FROM:<alice@example.test>", "250 ", "MAIL FROM:<alice@example.test> BODY=8BITMIME"},
		{"ok/null-sender", "MAIL FROM:<>", "250 ", "MAIL FROM:<> BODY=8BITMIME"},
		{"ok/quoted-atext-unquoted", `MAIL FROM:<"alice"@example.test>`, "250 ", "MAIL FROM:<alice@example.test> BODY=8BITMIME"},
		{"ok/dots-kept", "MAIL FROM:<a..b.@example.test>", "250 ", "MAIL FROM:<a..b.@example.test> BODY=8BITMIME"},
		{"ok/utf8-kept", "MAIL FROM:<jöe@example.test>", "250 ", "MAIL FROM:<jöe@example.test> BODY=8BITMIME"},
		{"ok/address-literal", "MAIL FROM:<a@[IPv6:::1]>", "250 ", "MAIL FROM:<a@[IPv6:::1]> BODY=8BITMIME"},
		{"ok/quoted-space", `MAIL FROM:<"john smith"@example.test>`, `250 2.0.0 Roger, accepting mail from <"john smith"@example.test>`,
			`MAIL FROM:<"john smith"@example.test> BODY=8BITMIME`},
		{"ok/quoted-escapes-kept", `MAIL FROM:<"a\"b\\c"@example.test>`, "250 ", `MAIL FROM:<"a\"b\\c"@example.test> BODY=8BITMIME`},
		{"ok/mail-auth-injection-quoted", `MAIL FROM:<"x> AUTH=<ceo@example.test> ENVID=a"@b.test>`, "250 ",
			`MAIL FROM:<"x> AUTH=<ceo@example.test> ENVID=a"@b.test> BODY=8BITMIME`},
		{"ok/rcpt-notify-injection-quoted", `RCPT TO:<"bob@example.test> NOTIFY=SUCCESS,DELAY,FAILURE ORCPT=rfc822;x"@y.test>`, "250 ",
			`RCPT TO:<"bob@example.test> NOTIFY=SUCCESS,DELAY,FAILURE ORCPT=rfc822;x"@y.test>`},
		{"ok/rcpt-quoted-at", `RCPT TO:<"a@b"@example.test>`, "250 ", `RCPT TO:<"a@b"@example.test>`},
		{"fail/mail-bare-cr-domain", "MAIL FROM:<a@b\rc.test>", "501 5.1.7 Bad sender address syntax", ""},
		{"fail/mail-nul-local", "MAIL FROM:<a\x00b@example.test>", "501 5.1.7 ", ""},
		{"fail/mail-quoted-cr", "MAIL FROM:<\"a\rb\"@example.test>", "501 5.1.7 ", ""},
		{"fail/mail-esc-domain", "MAIL FROM:<a@b\x1bc.test>", "501 5.1.7 ", ""},
		{"fail/mail-quote-domain", `MAIL FROM:<a@b"c.test>`, "501 5.1.7 ", ""},
		{"fail/mail-at-domain", "MAIL FROM:<a@b@c.test>", "501 5.1.7 ", ""},
		{"fail/rcpt-bare-cr", "RCPT TO:<b@b\rc.test>", "501 5.1.3 Bad recipient address syntax", ""},
		{"fail/rcpt-quoted-nul", "RCPT TO:<\"b\x00\"@example.test>", "501 5.1.3 ", ""},
		{"fail/rcpt-literal-backslash", `RCPT TO:<b@[1.2.3\4]>`, "501 5.1.3 ", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, u := newMTAFixture(t, nil)
			r := f.dialRaw(t, true)
			r.login()
			verb := "MAIL"
			if strings.HasPrefix(tc.cmd, "RCPT") {
				verb = "RCPT"
				r.send("MAIL FROM:<alice@example.test>")
				r.expect("250 ")
			}
			r.send(tc.cmd)
			r.expect(tc.reply)
			r.send("NOOP") // the session goes on
			r.expect("250 2.0.0 I have successfully done nothing")
			r.send("QUIT")
			r.expect("221 ")
			// The upstream records a command before it answers it, and
			// passgate answers the client after the upstream.
			got := u.commands(verb)
			want := []string(nil)
			if tc.upstream != "" {
				want = []string{tc.upstream}
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("upstream got %q, want %q", got, want)
			}
		})
	}
}
