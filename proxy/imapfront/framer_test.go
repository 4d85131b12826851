package imapfront

import (
	"strings"
	"testing"
)

func TestResponseFramer(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   bool
	}{
		{"nothing-yet", "", true},
		{"one-response", "* 3 EXISTS\r\n", true},
		{"half-a-line", "* 3 EXI", false},
		{"line-then-half", "* 3 EXISTS\r\n* 4 EX", false},
		{"literal-announced", "* 1 FETCH (BODY[] {5}\r\n", false},
		{"inside-literal", "* 1 FETCH (BODY[] {5}\r\nab", false},
		{"literal-done-line-open", "* 1 FETCH (BODY[] {5}\r\nabcde", false},
		{"literal-done-response-done", "* 1 FETCH (BODY[] {5}\r\nabcde)\r\n", true},
		{"literal-holding-crlf", "* 1 FETCH (BODY[] {4}\r\n\r\n\r\n)\r\n", true},
		{"literal-holding-crlf-open", "* 1 FETCH (BODY[] {4}\r\n\r\n\r\n", false},
		{"binary-literal", "* 1 FETCH (BINARY[] ~{3}\r\nx\ny)\r\n", true},
		{"zero-literal", "* 1 FETCH (BODY[] {0}\r\n)\r\n", true},
		{"zero-literal-open", "* 1 FETCH (BODY[] {0}\r\n", false},
		{"two-literals", "* 1 FETCH (A {1}\r\nx B {2}\r\nyz)\r\n", true},
		{"brace-not-literal", "* OK [ALERT] {not a literal}\r\n", true},
		{"bare-lf", "* OK fine\n", true},
		{"tagged", "a1 OK IDLE terminated\r\n", true},
		{"too-many-digits", "* 1 FETCH (BODY[] {12345678901234567890}\r\n)\r\n", false},
		{"overflow", "* 1 FETCH (BODY[] {9999999999999999999}\r\n)\r\n", false},
		{"long-line-digits-cut", "* " + strings.Repeat("9", 40) + "}\r\n", false},
		{"long-line-ok", "* OK " + strings.Repeat("x", 100) + "\r\n", true},
		{"long-line-literal", "* 1 FETCH (" + strings.Repeat("x", 100) + " {2}\r\nab)\r\n", true},
		{"compress-rfc4978", "a OK DEFLATE active\r\n", false},
		{"compress-dovecot", "a OK Begin compression.\r\n", false},
		{"compress-then-anything", "a OK Begin compression.\r\n* OK fine\r\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Whole, and byte by byte: the answer may not depend on how
			// the stream is cut into chunks.
			f := newResponseFramer()
			got := f.Feed([]byte(tc.stream))
			g := newResponseFramer()
			bytewise := true
			for i := range len(tc.stream) {
				bytewise = g.Feed([]byte{tc.stream[i]})
			}
			if got != tc.want || bytewise != tc.want {
				t.Fatalf("Feed(%q) = %v whole, %v byte by byte; want %v", tc.stream, got, bytewise, tc.want)
			}
		})
	}
}

// FuzzResponseFramer: the framer reads what the upstream sends; whatever
// that is, it must not panic, and how the stream is cut into chunks must
// not change its answer.
func FuzzResponseFramer(f *testing.F) {
	f.Add([]byte("* 1 FETCH (BODY[] {5}\r\nabcde)\r\n"), uint8(3))
	f.Add([]byte("* OK [ALERT] {x}\r\n~{2}\r\nab\r\n"), uint8(1))
	f.Add([]byte("a OK done\r\n* 2 EXISTS\r\n"), uint8(7))
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		whole := newResponseFramer().Feed(stream)
		g := newResponseFramer()
		n := int(step%16) + 1
		cut := len(stream) == 0
		for i := 0; i < len(stream); i += n {
			cut = g.Feed(stream[i:min(i+n, len(stream))])
		}
		if len(stream) == 0 {
			cut = g.Feed(nil)
		}
		if whole != cut {
			t.Fatalf("stream %q: %v whole, %v in chunks of %d", stream, whole, cut, n)
		}
	})
}
