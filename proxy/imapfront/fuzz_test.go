package imapfront

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// FuzzReadCommand feeds arbitrary bytes to the pre-login reader. Properties:
// no panic; every command stays within the reader's byte and token bounds;
// every refusal is well-formed IMAP lines; and a parsed LOGIN's fields come
// back unchanged when re-encoded as non-synchronising literals (and as
// quoted strings where they can be).
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"a LOGIN alice pw\r\n",
		`a LOGIN "al\"ice" "p\\w"` + "\r\n",
		"a LOGIN {5}\r\nalice {0}\r\n\r\n",
		"a LOGIN {5+}\r\nalice {3+}\r\npw!\r\nb NOOP\r\n",
		"a AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n",
		`a ID ("name" "x" "version" NIL)` + "\r\n",
		"a LOGIN {4294967295}\r\n",
		"a LOGIN {99999999999999999999+}\r\n",
		"\x16\x03\x01\x00",
		"a {5}\r\n",
		"\r\n\n\n",
		"a LOGIN \"x {5+}\r\nxxxxx\r\n",
	} {
		f.Add([]byte(s))
	}
	const maxLine, maxLit = 256, 256
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 64)
		r := reader{br: br, maxLine: maxLine, maxLiteral: maxLit, cont: func([]token) error { return nil }}
		for i := 0; i < 1000; i++ {
			cmd, err := r.readCommand()
			if err != nil {
				var re *replyError
				if !errors.As(err, &re) {
					return // the input ended
				}
				checkWire(t, re.wire())
				if re.fatal {
					return
				}
				continue
			}
			checkBounds(t, cmd, maxLine, maxLit)
			if cmd.name == "LOGIN" && len(cmd.args) == 2 && cmd.args[0].isString() && cmd.args[1].isString() {
				checkRoundTrip(t, cmd)
			}
		}
	})
}

func checkWire(t *testing.T, w []byte) {
	t.Helper()
	if !bytes.HasSuffix(w, []byte("\r\n")) {
		t.Fatalf("reply %q does not end with CRLF", w)
	}
	for _, l := range bytes.Split(w[:len(w)-2], []byte("\r\n")) {
		if bytes.ContainsAny(l, "\r\n\x00") {
			t.Fatalf("reply line %q has a stray line end or NUL", l)
		}
	}
}

func checkBounds(t *testing.T, cmd *command, maxLine, maxLit int) {
	t.Helper()
	if limit := maxLine + 2*maxLit + maxLine + 2; cmd.size > limit {
		t.Fatalf("command of %d bytes passed the bound %d", cmd.size, limit)
	}
	if len(cmd.args) > maxTokens {
		t.Fatalf("%d arguments", len(cmd.args))
	}
	total := len(cmd.tag) + len(cmd.name)
	for _, a := range cmd.args {
		if len(a.val) > max(maxLine, maxLit) {
			t.Fatalf("argument of %d bytes", len(a.val))
		}
		total += len(a.val)
	}
	if total > cmd.size {
		t.Fatalf("kept %d bytes of a %d-byte command", total, cmd.size)
	}
}

func checkRoundTrip(t *testing.T, cmd *command) {
	t.Helper()
	user, pass := cmd.args[0].val, cmd.args[1].val
	encodings := []string{fmt.Sprintf("%s LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n", cmd.tag, len(user), user, len(pass), pass)}
	if !bytes.ContainsAny(user, "\r\n") && !bytes.ContainsAny(pass, "\r\n") {
		encodings = append(encodings, cmd.tag+" LOGIN "+quote(user)+" "+quote(pass)+"\r\n")
	}
	for _, enc := range encodings {
		r := reader{br: bufio.NewReader(strings.NewReader(enc)), maxLine: 1 << 16, maxLiteral: 1 << 16}
		got, err := r.readCommand()
		if err != nil {
			t.Fatalf("re-encoded %q: %v", enc, err)
		}
		if got.tag != cmd.tag || got.name != "LOGIN" || len(got.args) != 2 ||
			!bytes.Equal(got.args[0].val, user) || !bytes.Equal(got.args[1].val, pass) {
			t.Fatalf("round trip of %q/%q through %q gave %q %q %v", user, pass, enc, got.tag, got.name, vals(got))
		}
	}
}

func quote(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		if c == '"' || c == '\\' {
			s.WriteByte('\\')
		}
		s.WriteByte(c)
	}
	s.WriteByte('"')
	return s.String()
}
