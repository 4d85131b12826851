package smtpfront

import (
	"testing"
)

var commandSeeds = []string{
	"EHLO client.test", "HELO  x y", "STARTTLS", "starttlsX", "ſtarttls", "NOOP", "noop", "xx", "", "MAILX", "NOOPx y",
	"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME", "mail from:<> AUTH=<>", "MAIL FROM:<@relay:a@b> AUTH=x+2By@b.test",
	"MAIL FROM: <\"quoted \\\" local\"@b.test>", "RCPT TO:<a@b.test> NOTIFY=NEVER", "RCPT TO:<bad", "MAIL FROM:<a@b> a=b=c SIZE=1 SIZE=2",
	"BDAT 10 LAST", "AUTH PLAIN AGFsaWNl", "MAIL FROM:<a@b> AUTH=+zz", "MAIL FROM:<a@b> AUTH=+7F+80",
}

// FuzzParseCommand compares the command line parsers (verb and argument,
// ESMTP parameters, paths, xtext) with go-smtp's, which passgate's
// replies were taken from.
func FuzzParseCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cmd, arg, err := parseCmd(line)
		rcmd, rarg, rerr := refParseCmd(line)
		if cmd != rcmd || arg != rarg || (err != nil) != (rerr != nil) {
			t.Fatalf("parseCmd(%q) = %q, %q, %v; go-smtp %q, %q, %v", line, cmd, arg, err, rcmd, rarg, rerr)
		}

		args, err := parseArgs(line)
		rargs, rerr := refParseArgs(line)
		if (err != nil) != (rerr != nil) {
			t.Fatalf("parseArgs(%q) error %v; go-smtp %v", line, err, rerr)
		}
		if err == nil {
			if len(args) != len(rargs) {
				t.Fatalf("parseArgs(%q) = %v; go-smtp %v", line, args, rargs)
			}
			for _, a := range args {
				if v, ok := rargs[a.key]; !ok || v != a.value {
					t.Fatalf("parseArgs(%q) = %v; go-smtp %v", line, args, rargs)
				}
			}
		}

		for _, reverse := range []bool{false, true} {
			p, rp := pathParser{s: line}, refParser{s: line}
			var got, want string
			var gerr, werr error
			if reverse {
				got, gerr = p.parseReversePath()
				want, werr = rp.parseReversePath()
			} else {
				got, gerr = p.parsePath()
				want, werr = rp.parsePath()
			}
			if (gerr != nil) != (werr != nil) || gerr == nil && (got != want || p.s != rp.s) {
				t.Fatalf("path(%q, reverse %v) = %q, %v, rest %q; go-smtp %q, %v, rest %q", line, reverse, got, gerr, p.s, want, werr, rp.s)
			}
		}
		p, rp := pathParser{s: line}, refParser{s: line}
		got, gerr := p.parseMailbox()
		want, werr := rp.parseMailbox()
		if (gerr != nil) != (werr != nil) || gerr == nil && (got != want || p.s != rp.s) {
			t.Fatalf("parseMailbox(%q) = %q, %v; go-smtp %q, %v", line, got, gerr, want, werr)
		}

		x, xerr := decodeXtext(line)
		rx, rxerr := refDecodeXtext(line)
		if (xerr != nil) != (rxerr != nil) || xerr == nil && x != rx {
			t.Fatalf("decodeXtext(%q) = %q, %v; go-smtp %q, %v", line, x, xerr, rx, rxerr)
		}
	})
}

// TestParseCmd is the table of verbs the wire test relies on.
func TestParseCmd(t *testing.T) {
	tests := []struct {
		name, line, cmd, arg string
		bad                  bool
	}{
		{"ok/verb-only", "noop", "NOOP", "", false},
		{"ok/argument-trimmed", "EHLO   a.test  ", "EHLO", "a.test", false},
		{"ok/starttls-prefix", "STARTTLSX", "STARTTLS", "", false},
		{"ok/empty", "", "", "", false},
		{"ok/crlf-trimmed", "QUIT\r", "QUIT", "", false},
		{"fail/short", "xx", "", "", true},
		{"fail/five", "MAILX", "", "", true},
		{"fail/no-space", "XCLIENT LOGIN=bob", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd, arg, err := parseCmd(tc.line)
			if cmd != tc.cmd || arg != tc.arg || (err != nil) != tc.bad {
				t.Fatalf("parseCmd(%q) = %q, %q, %v", tc.line, cmd, arg, err)
			}
		})
	}
}
