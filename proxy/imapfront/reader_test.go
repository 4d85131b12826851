package imapfront

import (
	"bufio"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

// readAll runs the reader over input and returns the commands, the
// continuation requests it sent (one "+" per synchronising literal) and the
// first error.
func readAll(input string, maxLine, maxLit int) (cmds []*command, conts int, rest string, err error) {
	br := bufio.NewReaderSize(strings.NewReader(input), 16)
	r := reader{br: br, maxLine: maxLine, maxLiteral: maxLit, cont: func([]token) error { conts++; return nil }}
	for {
		cmd, e := r.readCommand()
		if e != nil {
			b, _ := io.ReadAll(br)
			return cmds, conts, string(b), e
		}
		cmds = append(cmds, cmd)
	}
}

func vals(c *command) []string {
	var out []string
	for _, t := range c.args {
		switch t.kind {
		case tokOpen:
			out = append(out, "(")
		case tokClose:
			out = append(out, ")")
		default:
			out = append(out, string(t.val))
		}
	}
	return out
}

func TestReadCommand(t *testing.T) {
	type want struct {
		tag, name string
		args      []string
	}
	tests := []struct {
		name  string
		in    string
		want  []want
		conts int
	}{
		{"ok/atoms-ios-mail", "a1 LOGIN alice s3cr%t*]\r\n", []want{{"a1", "LOGIN", []string{"alice", "s3cr%t*]"}}}, 0},
		{"ok/lowercase-name", "a1 login alice pw\r\n", []want{{"a1", "LOGIN", []string{"alice", "pw"}}}, 0},
		{"ok/quoted-escapes-thunderbird", `a LOGIN "al\"ice" "p\\w\"d x"` + "\r\n", []want{{"a", "LOGIN", []string{`al"ice`, `p\w"d x`}}}, 0},
		{"ok/empty-quoted", `a LOGIN "" ""` + "\r\n", []want{{"a", "LOGIN", []string{"", ""}}}, 0},
		{"ok/sync-literals-imapsync", "a LOGIN {5}\r\nalice {6}\r\np\"w\\\r\n\r\n", []want{{"a", "LOGIN", []string{"alice", "p\"w\\\r\n"}}}, 2},
		{"ok/empty-literal-password", "a LOGIN {5}\r\nalice {0}\r\n\r\n", []want{{"a", "LOGIN", []string{"alice", ""}}}, 2},
		{"ok/non-sync-literal", "a LOGIN {5+}\r\nalice {3+}\r\npw!\r\n", []want{{"a", "LOGIN", []string{"alice", "pw!"}}}, 0},
		{"ok/bare-lf", "a NOOP\nb CAPABILITY\n", []want{{"a", "NOOP", nil}, {"b", "CAPABILITY", nil}}, 0},
		{"ok/id-list", `a ID ("name" "Thunderbird" "version" NIL)` + "\r\n", []want{{"a", "ID", []string{"(", "name", "Thunderbird", "version", "NIL", ")"}}}, 0},
		{"ok/utf8-quoted", "a LOGIN \"jürgen\" \"pässword\"\r\n", []want{{"a", "LOGIN", []string{"jürgen", "pässword"}}}, 0},
		{"ok/pipelined", "a LOGIN alice pw\r\nb NOOP\r\nc SELECT INBOX\r\n", []want{
			{"a", "LOGIN", []string{"alice", "pw"}}, {"b", "NOOP", nil}, {"c", "SELECT", []string{"INBOX"}}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmds, conts, _, err := readAll(tc.in, 64, 64)
			if !errors.Is(err, io.EOF) {
				t.Fatalf("end error = %v, want EOF", err)
			}
			var got []want
			for _, c := range cmds {
				got = append(got, want{c.tag, c.name, vals(c)})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("commands = %q\nwant %q", got, tc.want)
			}
			if conts != tc.conts {
				t.Errorf("continuations = %d, want %d", conts, tc.conts)
			}
		})
	}
}

func TestReadCommandRefused(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		wire  string // exact reply
		fatal bool
		conts int
	}{
		{"fail/line-too-long", "a LOGIN " + strings.Repeat("x", 100) + "\r\n", "* BYE [TOOBIG] Command line too long\r\n", true, 0},
		{"fail/huge-sync-literal", "a LOGIN {4294967295}\r\n", "a BAD [TOOBIG] Literal too large\r\n* BYE Closing connection\r\n", true, 0},
		{"fail/huge-digits", "a LOGIN {99999999999999999999999999}\r\n", "a BAD [TOOBIG] Literal too large\r\n* BYE Closing connection\r\n", true, 0},
		{"fail/huge-nonsync-literal", "a LOGIN {65+}\r\n", "* BYE [TOOBIG] Literal too large\r\n", true, 0},
		{"fail/command-budget", "a LOGIN {64}\r\n" + strings.Repeat("u", 64) + " {64}\r\n" + strings.Repeat("p", 64) + " {64}\r\n", "a BAD [TOOBIG] Literal too large\r\n* BYE Closing connection\r\n", true, 2},
		{"fail/nul-in-literal", "a LOGIN {3}\r\na\x00b pw\r\n", "a BAD NUL in literal\r\n* BYE Closing connection\r\n", true, 1},
		{"fail/nul-in-quoted", "a LOGIN \"a\x00b\" pw\r\n", "a BAD NUL in quoted string\r\n", false, 0},
		{"fail/bad-escape", `a LOGIN "a\nb" pw` + "\r\n", "a BAD Invalid escape in quoted string\r\n", false, 0},
		{"fail/unterminated", `a LOGIN "alice pw` + "\r\n", "a BAD Unterminated quoted string\r\n", false, 0},
		{"fail/literal-mid-line", "a LOGIN {5} pw\r\n", "a BAD Literal not at the end of a line\r\n", false, 0},
		{"fail/literal-as-name", "a {5}\r\n", "a BAD Literal in place of the command name\r\n", false, 0},
		{"fail/literal-as-name-nonsync", "a {5+}\r\nxxxxx\r\n", "a BAD Literal in place of the command name\r\n* BYE Closing connection\r\n", true, 0},
		{"fail/syntax-before-nonsync", "a LOGIN \"x {5+}\r\nxxxxx\r\n", "a BAD Unterminated quoted string\r\n* BYE Closing connection\r\n", true, 0},
		{"fail/empty-line", "\r\n", "* BAD Empty command line\r\n", false, 0},
		{"fail/invalid-tag", "a+b NOOP\r\n", "* BAD Invalid tag\r\n", false, 0},
		{"fail/missing-command", "a\r\n", "a BAD Missing command\r\n", false, 0},
		{"fail/control-char", "a LOGIN al\x01ice pw\r\n", "a BAD Control character in command\r\n", false, 0},
		{"fail/too-many-args", "a ID (" + strings.Repeat("x ", 130) + ")\r\n", "", true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			maxLine := 64
			if tc.name == "fail/too-many-args" {
				maxLine = 1024
			}
			cmds, conts, _, err := readAll(tc.in, maxLine, 64)
			if len(cmds) != 0 {
				t.Fatalf("parsed %d commands, want none", len(cmds))
			}
			var re *replyError
			if !errors.As(err, &re) {
				t.Fatalf("error = %v, want a reply", err)
			}
			if tc.wire != "" && string(re.wire()) != tc.wire {
				t.Errorf("reply = %q, want %q", re.wire(), tc.wire)
			}
			if re.fatal != tc.fatal {
				t.Errorf("fatal = %v, want %v", re.fatal, tc.fatal)
			}
			if conts != tc.conts {
				t.Errorf("continuations = %d, want %d", conts, tc.conts)
			}
		})
	}
}

// A refused synchronising literal gets no "+" and the line after it is
// read as the next command: the client never sent the literal.
func TestReadCommandNonFatalThenNext(t *testing.T) {
	cmds, _, _, err := readAll("a LOGIN {5} x\r\nb NOOP\r\n", 64, 64)
	var re *replyError
	if !errors.As(err, &re) || re.fatal {
		t.Fatalf("first error = %v, want a non-fatal reply", err)
	}
	if len(cmds) != 0 {
		t.Fatalf("commands = %d", len(cmds))
	}
	br := bufio.NewReader(strings.NewReader("a LOGIN {5} x\r\nb NOOP\r\n"))
	r := reader{br: br, maxLine: 64, maxLiteral: 64}
	if _, err := r.readCommand(); err == nil {
		t.Fatal("first command parsed")
	}
	c, err := r.readCommand()
	if err != nil || c.tag != "b" || c.name != "NOOP" {
		t.Fatalf("second command = %+v, %v", c, err)
	}
}

// The continuation hook can refuse a literal: no data is read.
func TestReadCommandContRefuses(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("a LOGIN {5}\r\nb NOOP\r\n"))
	refuse := &replyError{tag: "a", status: "NO", text: privacyRequired}
	r := reader{br: br, maxLine: 64, maxLiteral: 64, cont: func(sofar []token) error {
		if len(sofar) != 2 || string(sofar[1].val) != "LOGIN" {
			t.Errorf("hook got %d tokens", len(sofar))
		}
		return refuse
	}}
	if _, err := r.readCommand(); err != refuse {
		t.Fatalf("err = %v, want the hook's", err)
	}
	c, err := r.readCommand()
	if err != nil || c.name != "NOOP" {
		t.Fatalf("next = %+v, %v", c, err)
	}
}

func TestLiteralSpec(t *testing.T) {
	tests := []struct {
		line       string
		rest       string
		n          int
		plus, ok   bool
		limitOfTen bool
	}{
		{"a LOGIN {5}", "a LOGIN ", 5, false, true, false},
		{"a LOGIN {5+}", "a LOGIN ", 5, true, true, false},
		{"a LOGIN {0}", "a LOGIN ", 0, false, true, false},
		{"a LOGIN x{5}", "a LOGIN x{5}", 0, false, false, false},
		{"a LOGIN {}", "a LOGIN {}", 0, false, false, false},
		{"a LOGIN {+}", "a LOGIN {+}", 0, false, false, false},
		{"a (x {7}", "a (x ", 7, false, true, false},
		{"a ({7}", "a (", 7, false, true, false},
		{"a {4294967295}", "a ", 11, false, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.line, func(t *testing.T) {
			limit := 1 << 20
			if tc.limitOfTen {
				limit = 10
			}
			rest, n, plus, ok := literalSpec([]byte(tc.line), limit)
			if string(rest) != tc.rest || n != tc.n || plus != tc.plus || ok != tc.ok {
				t.Errorf("= %q %d %v %v, want %q %d %v %v", rest, n, plus, ok, tc.rest, tc.n, tc.plus, tc.ok)
			}
		})
	}
}
