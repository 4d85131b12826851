package smtpupstream

import (
	"bufio"
	"errors"
	"strings"
	"testing"
)

func TestReadReply(t *testing.T) {
	postfixEHLO := "250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n250 SMTPUTF8\r\n"
	tests := []struct {
		name  string
		in    string
		code  int
		lines int
		ok    bool
	}{
		{"ok/greeting", "220 mail.example.test ESMTP Postfix\r\n", 220, 1, true},
		{"ok/ehlo", postfixEHLO, 250, 6, true},
		{"ok/bare-lf", "250 ok\n", 250, 1, true},
		{"ok/code-only", "220\r\n", 220, 1, true},
		{"fail/refused-xclient", "550 5.7.0 Error: insufficient authorization\r\n", 550, 1, true},
		{"fail/mixed-codes", "250-a\r\n251 b\r\n", 0, 0, false},
		{"fail/bad-separator", "250_a\r\n", 0, 0, false},
		{"fail/short", "25\r\n", 0, 0, false},
		{"fail/code-range", "650 x\r\n", 0, 0, false},
		{"fail/eof", "250-a\r\n", 0, 0, false},
		{"fail/long-line", "250 " + strings.Repeat("x", maxReplyLineSize+10) + "\r\n", 0, 0, false},
		{"fail/too-many-lines", strings.Repeat("250-x\r\n", maxReplyLines+1) + "250 y\r\n", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := readReply(bufio.NewReaderSize(strings.NewReader(tc.in), 16))
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			if rep.Code != tc.code || len(rep.Lines) != tc.lines {
				t.Fatalf("reply %+v, want code %d with %d lines", rep, tc.code, tc.lines)
			}
		})
	}
	rep, _ := readReply(bufio.NewReader(strings.NewReader(postfixEHLO)))
	ext := extensions(rep)
	if ext["SIZE"] != "10240000" {
		t.Errorf("SIZE = %q", ext["SIZE"])
	}
	if m := hasAttrs(ext["XCLIENT"], "LOGIN", "ADDR", "PORT"); len(m) != 0 {
		t.Errorf("missing %v", m)
	}
	if m := hasAttrs("NAME ADDR", "LOGIN", "ADDR"); len(m) != 1 || m[0] != "LOGIN" {
		t.Errorf("missing = %v, want [LOGIN]", m)
	}
}

func TestXtext(t *testing.T) {
	tests := []struct{ in, want string }{
		{"alice", "alice"},
		{"alice@example.test", "alice@example.test"},
		{"a+b=c", "a+2Bb+3Dc"},
		{"a b\r\n", "a+20b+0D+0A"},
		{"IPV6:2001:db8::1", "IPV6:2001:db8::1"},
		{"ü", "+C3+BC"},
	}
	for _, tc := range tests {
		if got := xtext(tc.in); got != tc.want {
			t.Errorf("xtext(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"220 mail ESMTP\r\n",
		"250-mail\r\n250-XCLIENT NAME ADDR PORT LOGIN\r\n250 SIZE 100\r\n",
		"550 5.7.0 no\r\n",
		"250-a\r\n251 b\r\n",
		"2",
		"250 \xff\x00\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		rep, err := readReply(bufio.NewReaderSize(strings.NewReader(string(in)), 16))
		if err != nil {
			if !errors.Is(err, errBadReply) && !strings.Contains(err.Error(), "read reply") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if rep.Code < 200 || rep.Code > 599 || len(rep.Lines) == 0 || len(rep.Lines) > maxReplyLines {
			t.Fatalf("reply out of bounds: %+v", rep)
		}
		for _, l := range rep.Lines {
			if len(l) > maxReplyLineSize || strings.ContainsAny(l, "\n") {
				t.Fatalf("line out of bounds: %q", l)
			}
		}
		ext := extensions(rep)
		for k := range ext {
			if k != strings.ToUpper(k) || k == "" {
				t.Fatalf("extension key %q", k)
			}
		}
		// The XCLIENT attribute check never claims an attribute that is
		// not listed.
		if miss := hasAttrs(ext["XCLIENT"], "LOGIN"); len(miss) == 0 && !strings.Contains(strings.ToUpper(ext["XCLIENT"]), "LOGIN") {
			t.Fatalf("LOGIN found in %q", ext["XCLIENT"])
		}
	})
}
