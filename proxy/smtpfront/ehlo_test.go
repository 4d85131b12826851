package smtpfront_test

import (
	"strings"
	"testing"
)

// TestClientNameBounded: the EHLO name reaches the decision (and so the
// audit events and the app password's last-used client) as at most 255
// bytes of printable ASCII, every other byte replaced with "?"; the
// upstream gets it only when it is so already.
func TestClientNameBounded(t *testing.T) {
	tests := []struct {
		name, helo, client, upstream string
	}{
		{"ok/plain", "client.test", "client.test", "client.test"},
		{"ok/255-bytes", strings.Repeat("a", 255), strings.Repeat("a", 255), strings.Repeat("a", 255)},
		{"fail/8000-bytes", strings.Repeat("a", 8000), strings.Repeat("a", 255), ""},
		{"fail/escape", "a\x1b[31mb", "a?[31mb", ""},
		{"fail/bare-cr", "a\rb", "a?b", ""},
		{"fail/nul", "a\x00b", "a?b", ""},
		{"fail/non-ascii", "jö.test", "j??.test", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := f.dialRaw(t, true)
			r.send("EHLO " + tc.helo)
			r.expect("250")
			r.login()
			r.send("QUIT")
			r.expect("221 ")
			f.dec.mu.Lock()
			attempts := append(f.dec.attempts[:0:0], f.dec.attempts...)
			f.dec.mu.Unlock()
			if len(attempts) != 1 || attempts[0].ClientName != tc.client {
				var names []string
				for _, a := range attempts {
					names = append(names, a.ClientName)
				}
				t.Fatalf("decision got client names %q, want [%q]", names, tc.client)
			}
			f.up.mu.Lock()
			logins := append(f.up.logins[:0:0], f.up.logins...)
			f.up.mu.Unlock()
			if len(logins) != 1 || logins[0].Helo != tc.upstream {
				t.Fatalf("upstream logins %+v, want one with Helo %q", logins, tc.upstream)
			}
		})
	}
}
