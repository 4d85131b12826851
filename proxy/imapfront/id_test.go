package imapfront

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// idForm is how a test ID writes its strings.
type idForm int

const (
	idQuoted      idForm = iota // "value"
	idLiteral                   // {n} CRLF value: the client waits for "+"
	idLiteralPlus               // {n+} CRLF value
)

// idString writes s in form f, as it follows a space or "(".
func idString(s string, f idForm) string {
	switch f {
	case idLiteral:
		return fmt.Sprintf("{%d}\r\n%s", len(s), s)
	case idLiteralPlus:
		return fmt.Sprintf("{%d+}\r\n%s", len(s), s)
	}
	return quote([]byte(s))
}

// idCommand writes "tag ID (k v ...)" with every string in form f and NIL
// for an empty value.
func idCommand(tag string, pairs [][2]string, f idForm) string {
	var b strings.Builder
	b.WriteString(tag + " ID (")
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(idString(p[0], f) + " ")
		if p[1] == "" {
			b.WriteString("NIL")
		} else {
			b.WriteString(idString(p[1], f))
		}
	}
	b.WriteString(")\r\n")
	return b.String()
}

// idPairs returns n pairs of a field of keyLen octets and a value of
// valueLen octets, each made of fill's bytes (repeated) after a prefix
// that keeps the fields distinct, like imaptest's "a2345...", "b2345...".
func idPairs(n, keyLen, valueLen int, fill string) [][2]string {
	pairs := make([][2]string, n)
	for i := range pairs {
		key := fmt.Sprintf("%c%c", 'a'+i/26, 'a'+i%26) + strings.Repeat(fill, keyLen)
		pairs[i] = [2]string{key[:keyLen], strings.Repeat(fill, valueLen)[:valueLen]}
	}
	return pairs
}

// widestPairs are the pairs of the widest legal ID on the wire: every
// octet of every field and value needs an escape when quoted.
func widestPairs() [][2]string {
	pairs := idPairs(maxIDPairs, maxIDKeyLen, maxIDValueLen, `"\`)
	for i := range pairs {
		pairs[i][0] = strings.Repeat(`"`, maxIDKeyLen)
	}
	return pairs
}

// largestID is the largest ID RFC 2971 allows, as imaptest's "id" test
// sends it: 30 pairs of 30-octet fields and 1024-octet values, quoted.
func largestID(tag string) string {
	return idCommand(tag, idPairs(maxIDPairs, maxIDKeyLen, maxIDValueLen, "1234567890"), idQuoted)
}

func TestReadCommandID(t *testing.T) {
	const maxLine, maxLit = 1024, 64 // the smallest line bound a configuration allows
	// With a tag of 64 octets, the most bytes a legal ID takes on the
	// wire: exactly maxIDWire.
	escaped := widestPairs()
	widest := idCommand(strings.Repeat("t", 64), escaped, idQuoted)
	if len(widest) != maxIDWire {
		t.Fatalf("the widest legal ID is %d bytes, maxIDWire %d", len(widest), maxIDWire)
	}
	withNil := idPairs(maxIDPairs, maxIDKeyLen, maxIDValueLen, "v")
	withNil[3][1], withNil[29][1] = "", ""
	tests := []struct {
		name  string
		in    string
		pairs [][2]string // the ID's pairs as parsed
		conts int
	}{
		{"ok/largest-quoted-imaptest", largestID("ok"), idPairs(30, 30, 1024, "1234567890"), 0},
		{"ok/largest-lowercase-name", strings.Replace(largestID("a"), " ID ", " id ", 1), idPairs(30, 30, 1024, "1234567890"), 0},
		{"ok/widest-escaped", widest, escaped, 0},
		{"ok/largest-sync-literals", idCommand("a", idPairs(30, 30, 1024, "x"), idLiteral), idPairs(30, 30, 1024, "x"), 60},
		{"ok/largest-nonsync-literals", idCommand("a", idPairs(30, 30, 1024, "x"), idLiteralPlus), idPairs(30, 30, 1024, "x"), 0},
		{"ok/nil-values", idCommand("a", withNil, idQuoted), withNil, 0},
		{"ok/empty-field", idCommand("a", [][2]string{{"", "x"}}, idQuoted), [][2]string{{"", "x"}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmds, conts, _, err := readAll(tc.in, maxLine, maxLit)
			if !errors.Is(err, io.EOF) {
				t.Fatalf("end error = %v, want EOF", err)
			}
			if len(cmds) != 1 || cmds[0].name != "ID" {
				t.Fatalf("commands = %d, want one ID", len(cmds))
			}
			if cmds[0].size != len(tc.in) {
				t.Errorf("size = %d, want %d", cmds[0].size, len(tc.in))
			}
			var want []string
			want = append(want, "(")
			for _, p := range tc.pairs {
				v := p[1]
				if v == "" {
					v = "NIL"
				}
				want = append(want, p[0], v)
			}
			want = append(want, ")")
			if got := vals(cmds[0]); !reflect.DeepEqual(got, want) {
				t.Errorf("arguments differ: %d read, %d sent", len(got), len(want))
			}
			if _, ok := parseID(cmds[0].args); !ok {
				t.Errorf("parseID refused a legal ID")
			}
			if conts != tc.conts {
				t.Errorf("continuations = %d, want %d", conts, tc.conts)
			}
		})
	}
}

// Past the ID's own bounds, and for every other command past the general
// line bound, the reader refuses as it refuses any oversized input.
func TestReadCommandIDRefused(t *testing.T) {
	const maxLine, maxLit = 1024, 64
	tooBig := "* BYE [TOOBIG] Command line too long\r\n"
	widest := idCommand(strings.Repeat("t", 64), widestPairs(), idQuoted)
	value1025 := idPairs(1, 30, 1025, "x")
	tests := []struct {
		name  string
		in    string
		wire  string
		fatal bool
		conts int
	}{
		{"fail/widest-plus-one-octet", strings.Replace(widest, " ID (", " ID  (", 1), tooBig, true, 0},
		{"fail/31-widest-pairs", idCommand("a", idPairs(31, 30, 1024, `"`), idQuoted), tooBig, true, 0},
		{"fail/value-literal-1025", idCommand("a", value1025, idLiteral), "a BAD [TOOBIG] Literal too large\r\n* BYE Closing connection\r\n", true, 1},
		{"fail/value-literal-plus-1025", idCommand("a", value1025, idLiteralPlus), "* BYE [TOOBIG] Literal too large\r\n", true, 0},
		{"fail/login-one-over-line", "a LOGIN " + strings.Repeat("x", maxLine-len("a LOGIN ")+1) + "\r\n", tooBig, true, 0},
		{"fail/noop-32k", "a NOOP " + strings.Repeat("x", 32<<10) + "\r\n", tooBig, true, 0},
		{"fail/name-idx", "a IDX (" + strings.Repeat("x", maxLine) + ")\r\n", tooBig, true, 0},
		{"fail/name-xid", "a XID (" + strings.Repeat("x", maxLine) + ")\r\n", tooBig, true, 0},
		{"fail/invalid-tag", "a+ ID (" + strings.Repeat("x", maxLine) + ")\r\n", tooBig, true, 0},
		{"fail/no-tag", "ID (" + strings.Repeat("x", maxLine) + ")\r\n", tooBig, true, 0},
		{"fail/login-literal-keeps-its-bound", "a LOGIN {65}\r\n", "a BAD [TOOBIG] Literal too large\r\n* BYE Closing connection\r\n", true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmds, conts, _, err := readAll(tc.in, maxLine, maxLit)
			if len(cmds) != 0 {
				t.Fatalf("parsed %d commands, want none", len(cmds))
			}
			var re *replyError
			if !errors.As(err, &re) {
				t.Fatalf("error = %v, want a reply", err)
			}
			if string(re.wire()) != tc.wire {
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

// The ID's bounds end with the ID: the next command has the general ones.
func TestReadCommandIDBoundsEndWithID(t *testing.T) {
	const maxLine = 1024
	in := largestID("a") + "b LOGIN " + strings.Repeat("x", maxLine) + "\r\n"
	cmds, _, _, err := readAll(in, maxLine, 64)
	if len(cmds) != 1 || cmds[0].name != "ID" {
		t.Fatalf("commands = %d, want the ID", len(cmds))
	}
	var re *replyError
	if !errors.As(err, &re) || string(re.wire()) != "* BYE [TOOBIG] Command line too long\r\n" {
		t.Fatalf("after the ID: %v, want TOOBIG", err)
	}
}

func TestParseIDBounds(t *testing.T) {
	tok := func(k tokenKind, v string) token { return token{kind: k, val: []byte(v)} }
	list := func(pairs [][2]string, kind tokenKind) []token {
		args := []token{{kind: tokOpen}}
		for _, p := range pairs {
			args = append(args, tok(kind, p[0]), tok(kind, p[1]))
		}
		return append(args, token{kind: tokClose})
	}
	named := idPairs(maxIDPairs, maxIDKeyLen, maxIDValueLen, "v")
	named[0][0], named[1][0], named[1][1] = "Name", "version", "8.0"
	tests := []struct {
		name   string
		args   []token
		want   []IDField
		wantOK bool
	}{
		{"ok/largest", list(idPairs(30, 30, 1024, "v"), tokQuoted), nil, true},
		{"ok/largest-literals", list(idPairs(30, 30, 1024, "v"), tokLiteral), nil, true},
		{"ok/largest-standard-fields-kept", list(named, tokQuoted), []IDField{{"name", strings.Repeat("v", 1024)}, {"version", "8.0"}}, true},
		{"fail/31-pairs", list(idPairs(31, 1, 1, "v"), tokQuoted), nil, false},
		{"fail/field-31-octets", list(idPairs(1, 31, 1, "v"), tokQuoted), nil, false},
		{"fail/value-1025-octets", list(idPairs(1, 30, 1025, "v"), tokQuoted), nil, false},
		{"fail/value-1025-octets-literal", list(idPairs(1, 30, 1025, "v"), tokLiteral), nil, false},
		{"fail/name-1025-octets", list([][2]string{{"name", strings.Repeat("v", 1025)}}, tokQuoted), nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseID(tc.args)
			if ok != tc.wantOK || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("= %d fields %v, want %d fields %v", len(got), ok, len(tc.want), tc.wantOK)
			}
		})
	}
}

// Through the server with its default bounds: the largest ID is answered,
// the fields kept are passed on at login, and what passes the bounds is
// refused as before.
func TestIDLargest(t *testing.T) {
	t.Run("ok/largest-then-login", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send(largestID("i"))
		rc.expect(`* ID ("name" "passgate")`, "i OK ID completed")
		named := idPairs(maxIDPairs, maxIDKeyLen, maxIDValueLen, "v")
		named[0] = [2]string{"name", "OfflineIMAP"}
		named[1] = [2]string{"version", strings.Repeat("8", maxIDValueLen)}
		rc.send(idCommand("j", named, idLiteralPlus))
		rc.expect(`* ID ("name" "passgate")`, "j OK ID completed")
		rc.send("a LOGIN bob " + primaryPass + "\r\n")
		rc.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
		attempts, _, _ := ts.dec.snapshot()
		if len(attempts) != 1 || attempts[0].ClientName != ("OfflineIMAP " + strings.Repeat("8", maxIDValueLen))[:128] {
			t.Fatalf("attempts = %+v", attempts)
		}
		reqs, _ := ts.up.snapshot()
		want := []IDField{{"name", "OfflineIMAP"}, {"version", strings.Repeat("8", maxIDValueLen)}}
		if len(reqs) != 1 || !reflect.DeepEqual(reqs[0].ClientID, want) {
			t.Fatalf("forwarded ID = %+v", reqs)
		}
	})
	t.Run("fail/31-pairs-kept-open", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send(idCommand("i", idPairs(31, 30, 1024, "v"), idQuoted))
		rc.expect("i BAD Invalid ID arguments")
		rc.send("n NOOP\r\n")
		rc.expect("n OK NOOP completed")
	})
	t.Run("fail/past-the-wire-bound", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send(idCommand("i", idPairs(31, 30, 1024, `"`), idQuoted))
		rc.expect("* BYE [TOOBIG] Command line too long")
		rc.expectClosed()
	})
	t.Run("fail/other-command-at-the-general-bound", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send("a LOGIN bob " + strings.Repeat("x", DefaultMaxLineLength) + "\r\n")
		rc.expect("* BYE [TOOBIG] Command line too long")
		rc.expectClosed()
	})
}
