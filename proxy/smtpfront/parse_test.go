package smtpfront

import (
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

var commandSeeds = []string{
	"EHLO client.test", "HELO  x y", "STARTTLS", "starttlsX", "ſtarttls", "NOOP", "noop", "xx", "", "MAILX", "NOOPx y",
	"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME", "mail from:<> AUTH=<>", "MAIL FROM:<@relay:a@b> AUTH=x+2By@b.test",
	"MAIL FROM: <\"quoted \\\" local\"@b.test>", "RCPT TO:<a@b.test> NOTIFY=NEVER", "RCPT TO:<bad", "MAIL FROM:<a@b> a=b=c SIZE=1 SIZE=2",
	"BDAT 10 LAST", "AUTH PLAIN AGFsaWNl", "MAIL FROM:<a@b> AUTH=+zz", "MAIL FROM:<a@b> AUTH=+7F+80",
}

// FuzzParseCommand compares passgate's MAIL and RCPT path parsing with
// go-smtp's server, which passgate's replies were taken from: a path
// passgate takes (a command without parameters) is the address go-smtp's
// server handed its session for the same line. passgate may refuse what
// go-smtp took, never take an address go-smtp did not, or another one.
// Every other line must parse without a panic.
func FuzzParseCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		if strings.ContainsAny(line, "\r\n") {
			return // a line never holds a line end
		}
		cmd, arg, err := parseCmd(line)
		_, _ = parseArgs(line)
		_, _ = decodeXtext(line)
		if err != nil || cmd != "MAIL" && cmd != "RCPT" {
			return
		}
		ours, ok := ourPath(cmd, arg)
		theirs, called := goSMTPPath(cmd, line)
		if ok && (!called || ours != theirs) {
			t.Fatalf("%q: passgate takes the address %q; go-smtp's server took %q (called %v)", line, ours, theirs, called)
		}
	})
}

// ourPath is the address of a MAIL or RCPT argument as passgate's
// handlers parse it, and whether they take it (a path, no parameters).
func ourPath(cmd, arg string) (string, bool) {
	prefix := "FROM:"
	if cmd == "RCPT" {
		prefix = "TO:"
	}
	arg, ok := cutPrefixFold(arg, prefix)
	if !ok {
		return "", false
	}
	p := pathParser{s: strings.TrimSpace(arg)}
	var addr string
	var err error
	if cmd == "MAIL" {
		addr, err = p.parseReversePath()
	} else {
		addr, err = p.parsePath()
	}
	if err != nil || !isASCII(addr) {
		return "", false
	}
	if args, err := parseArgs(p.s); err != nil || len(args) > 0 {
		return "", false
	}
	return addr, true
}

// goSMTPPath is the address go-smtp's server hands its session for the
// MAIL or RCPT command line, and whether it does.
func goSMTPPath(cmd, line string) (string, bool) {
	chunks := [][]byte{[]byte("EHLO a\r\n")}
	if cmd == "RCPT" {
		chunks = append(chunks, []byte("MAIL FROM:<>\r\n"))
	}
	chunks = append(chunks, []byte(line+"\r\n"))
	var addr string
	called := false
	sess := &oracleSession{}
	if cmd == "MAIL" {
		sess.onMail = func(from string, _ *smtp.MailOptions) { addr, called = from, true }
	} else {
		sess.onRcpt = func(to string, _ *smtp.RcptOptions) { addr, called = to, true }
	}
	runGoSMTP(chunks, 0, 0, sess)
	return addr, called
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
