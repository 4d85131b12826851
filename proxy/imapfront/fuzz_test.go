package imapfront

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// FuzzReadCommand feeds arbitrary bytes to the pre-login reader. Properties:
// no panic; every command stays within the reader's byte and token bounds
// (an ID within its own); every refusal is well-formed IMAP lines; a parsed
// LOGIN's fields come back unchanged when re-encoded as non-synchronising
// literals (and as quoted strings where they can be); and an ID that
// parseID accepts comes back unchanged in its widest encodings through a
// reader with the smallest general bounds a configuration allows.
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		// IDs small enough for the fuzzer to mutate (FuzzReadID builds
		// the large ones); the first two pass this target's line bound.
		idCommand("a", idPairs(3, 30, 90, `"\`), idQuoted) + "b LOGIN alice pw\r\n",
		idCommand("a", idPairs(3, 30, 300, "x"), idLiteral),
		idCommand("a", idPairs(2, 5, 7, "x"), idLiteralPlus),
		idCommand("a", idPairs(2, 31, 7, "x"), idQuoted),
		idCommand("a", [][2]string{{"name", "a\r\nb"}, {"version", ""}}, idLiteralPlus),
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
			if _, ok := parseID(cmd.args); cmd.name == "ID" && ok && len(cmd.args) > 1 {
				checkIDRoundTrip(t, cmd)
			}
		}
	})
}

// FuzzReadID builds IDs of any size from a few small parameters, so that
// the fuzzer explores the ID's bounds without mutating 32 KB inputs: pairs,
// field and value lengths up to past RFC 2971's bounds, the strings' bytes
// (fill, repeated) and their form. Read with the smallest general bounds a
// configuration allows, an ID within the RFC's bounds is read whole and
// accepted by parseID; one past them is refused, by the reader or by
// parseID; and the next command has the general bounds again.
func FuzzReadID(f *testing.F) {
	f.Add([]byte("1234567890"), uint8(30), uint8(30), uint16(1024), uint8(idQuoted))
	f.Add([]byte(`"\`), uint8(30), uint8(30), uint16(1024), uint8(idQuoted))
	f.Add([]byte("x\r\n"), uint8(30), uint8(30), uint16(1024), uint8(idLiteral))
	f.Add([]byte("x"), uint8(30), uint8(30), uint16(1024), uint8(idLiteralPlus))
	f.Add([]byte("x"), uint8(31), uint8(30), uint16(1024), uint8(idQuoted))
	f.Add([]byte("x"), uint8(1), uint8(31), uint16(1), uint8(idQuoted))
	f.Add([]byte("x"), uint8(1), uint8(30), uint16(1025), uint8(idLiteralPlus))
	f.Add([]byte(""), uint8(0), uint8(0), uint16(0), uint8(idQuoted))
	const maxLine = 1024
	f.Fuzz(func(t *testing.T, fill []byte, pairs, keyLen uint8, valueLen uint16, form uint8) {
		n, kl, vl, fm := int(pairs)%40, int(keyLen)%40, int(valueLen)%1100, idForm(form%3)
		// Quoted strings carry no CR, LF or NUL; literals no NUL.
		fill = bytes.Map(func(r rune) rune {
			if r == 0 || (fm == idQuoted && (r == '\r' || r == '\n')) {
				return -1
			}
			return r
		}, fill)
		if len(fill) == 0 {
			fill = []byte("x")
		}
		rep := func(l int) string { return strings.Repeat(string(fill), l/len(fill)+1)[:l] }
		ps := make([][2]string, n)
		for i := range ps {
			ps[i] = [2]string{rep(kl), rep(vl)} // an empty value is sent as NIL
		}
		in := idCommand("a", ps, fm) + "b LOGIN " + strings.Repeat("x", maxLine) + "\r\n"
		legal := n <= maxIDPairs && (n == 0 || kl <= maxIDKeyLen && vl <= maxIDValueLen)
		r := reader{br: bufio.NewReaderSize(strings.NewReader(in), 64), maxLine: maxLine, maxLiteral: 1, cont: func([]token) error { return nil }}
		cmd, err := r.readCommand()
		if err != nil {
			var re *replyError
			if !errors.As(err, &re) {
				t.Fatalf("reading an ID: %v", err)
			}
			checkWire(t, re.wire())
			if legal {
				t.Fatalf("legal ID (%d pairs, %d/%d octets, form %d) refused: %q", n, kl, vl, fm, re.wire())
			}
			if re.fatal {
				return
			}
		} else {
			checkBounds(t, cmd, maxLine, 1)
			_, ok := parseID(cmd.args)
			if ok != legal {
				t.Fatalf("parseID = %v for an ID of %d pairs, %d/%d octets, form %d", ok, n, kl, vl, fm)
			}
			if legal {
				want := []string{"("}
				for _, p := range ps {
					v := p[1]
					if v == "" {
						v = "NIL"
					}
					want = append(want, p[0], v)
				}
				if got := vals(cmd); !reflect.DeepEqual(got, append(want, ")")) {
					t.Fatalf("the ID's strings came back changed")
				}
			}
		}
		_, err = r.readCommand()
		var re *replyError
		if !errors.As(err, &re) || string(re.wire()) != "* BYE [TOOBIG] Command line too long\r\n" {
			t.Fatalf("a LOGIN line past the general bound after an ID: %v", err)
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
	budget, arg := maxLine+2*maxLit, max(maxLine, maxLit)
	if cmd.name == "ID" {
		budget, arg = max(budget, maxIDWire), max(arg, maxIDWire)
	}
	if limit := budget + maxLine + 2; cmd.size > limit {
		t.Fatalf("command of %d bytes passed the bound %d", cmd.size, limit)
	}
	if len(cmd.args) > maxTokens {
		t.Fatalf("%d arguments", len(cmd.args))
	}
	total := len(cmd.tag) + len(cmd.name)
	for _, a := range cmd.args {
		if len(a.val) > arg {
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

// checkIDRoundTrip re-encodes an ID that parseID accepted as quoted
// strings where it can be, and as non-synchronising literals, and reads it back through a reader whose
// general bounds are the smallest a configuration allows: an ID is bounded
// by its own limits only.
func checkIDRoundTrip(t *testing.T, cmd *command) {
	t.Helper()
	inner := cmd.args[1 : len(cmd.args)-1]
	quotable := true
	for _, a := range inner {
		quotable = quotable && !bytes.ContainsAny(a.val, "\r\n")
	}
	encode := func(literal bool) string {
		var b strings.Builder
		b.WriteString(cmd.tag + " ID (")
		for i, a := range inner {
			if i > 0 {
				b.WriteByte(' ')
			}
			switch {
			case a.kind == tokAtom:
				b.Write(a.val) // NIL, in the client's case
			case literal:
				fmt.Fprintf(&b, "{%d+}\r\n%s", len(a.val), a.val)
			default:
				b.WriteString(quote(a.val))
			}
		}
		b.WriteString(")\r\n")
		return b.String()
	}
	encodings := []string{encode(true)}
	if quotable {
		encodings = append(encodings, encode(false))
	}
	for _, enc := range encodings {
		r := reader{br: bufio.NewReader(strings.NewReader(enc)), maxLine: 1024, maxLiteral: 1}
		got, err := r.readCommand()
		if err != nil {
			t.Fatalf("re-encoded ID of %d bytes: %v", len(enc), err)
		}
		if got.tag != cmd.tag || got.name != "ID" || !reflect.DeepEqual(vals(got), vals(cmd)) {
			t.Fatalf("round trip of an ID through %q gave %q %q %q", enc, got.tag, got.name, vals(got))
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
