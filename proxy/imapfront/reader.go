package imapfront

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// tokenKind says how an argument was written on the wire.
type tokenKind int

const (
	tokAtom    tokenKind = iota // bare atom, e.g. alice or NIL
	tokQuoted                   // "quoted string" with \" and \\ escapes
	tokLiteral                  // {n} or {n+} literal
	tokOpen                     // (
	tokClose                    // )
)

// token is one argument of a command. val holds the decoded bytes of an
// atom, a quoted string or a literal; it is nil for parentheses.
type token struct {
	kind tokenKind
	val  []byte
}

// isString reports whether t can stand for an IMAP astring (atom, quoted
// string or literal).
func (t token) isString() bool {
	return t.kind == tokAtom || t.kind == tokQuoted || t.kind == tokLiteral
}

// command is one parsed pre-login command.
type command struct {
	tag  string  // as sent
	name string  // upper-cased command name, e.g. "LOGIN"
	args []token // everything after the name
	size int     // bytes read off the wire for this command (lines and literals)
}

// replyError is a command the reader refused. It carries the reply the
// client gets; fatal means the connection is closed after the reply.
type replyError struct {
	tag    string // the command's tag when known; "" otherwise
	status string // "BAD" or "NO" for a tagged reply
	text   string // reply text, may start with a response code
	bye    bool   // reply with an untagged "* BYE text" instead
	fatal  bool   // close the connection after replying
	ended  string // "ended" value of the session log line when fatal
}

func (e *replyError) Error() string {
	return "imapfront: refused command: " + e.text
}

// wire returns the bytes the client gets for e.
func (e *replyError) wire() []byte {
	switch untagged := e.bye || e.tag == ""; {
	case untagged && e.fatal:
		return []byte("* BYE " + e.text + "\r\n")
	case untagged:
		return []byte("* BAD " + e.text + "\r\n")
	case e.fatal:
		return []byte(e.tag + " " + e.status + " " + e.text + "\r\n* BYE Closing connection\r\n")
	}
	return []byte(e.tag + " " + e.status + " " + e.text + "\r\n")
}

// Limits on one pre-login command beyond the configured line and literal
// lengths.
const (
	maxTokens   = 128 // arguments per command (ID: 30 pairs, parentheses)
	maxLiterals = 64  // literals per command
)

// maxIDWire is the most bytes an ID that RFC 2971 allows can take on the
// wire: a tag, " ID (", pairs of a field and a value each quoted with every
// octet escaped, the spaces between them, ")" and CRLF. No other legal
// form is longer: a string sent as a literal of n octets takes n+9 bytes
// at most ({n+}, CRLF), NIL 3, both within the 2n+2 of a quoted string of
// the bound's length. The largest ID, about 32 KB on one line unescaped,
// is past the general line bound: an ID is bounded by this instead, every
// other command by the configured lengths. While an ID is read, a
// connection holds at most this line and the decoded strings (31,620
// octets).
const maxIDWire = 64 + len(" ID (") +
	maxIDPairs*(2*maxIDKeyLen+2+len(" ")+2*maxIDValueLen+2) + maxIDPairs - 1 +
	len(")\r\n")

// reader reads pre-login commands: lines with atoms, quoted strings,
// parentheses and synchronising ({n}) or non-synchronising ({n+}) literals.
// Every byte it keeps is bounded: a line by maxLine, a literal by
// maxLiteral, a whole command by maxLine+2*maxLiteral, and nothing is
// allocated for a literal before its length has been checked. An ID
// command gets the larger of these bounds and its own: the whole command
// within maxIDWire, a literal within maxIDValueLen.
type reader struct {
	br         *bufio.Reader
	maxLine    int
	maxLiteral int
	// cont is called before the reader waits for the data of a
	// synchronising literal; it must send "+ Ready". It gets the tokens
	// read so far (tag, name, args) and may refuse the literal by
	// returning a *replyError: the client then never sends the data.
	cont func(sofar []token) error
}

// errLineTooLong is returned by readLine for a line past the limit.
var errLineTooLong = errors.New("imapfront: line too long")

// readLine reads one line of at most max bytes (without its line end) and
// returns it without the CRLF (a bare LF is accepted). The returned slice
// is a fresh copy. The bound may be raised once: when the line passes max,
// grow (if not nil) gets the bytes read so far and returns the bound to
// read on with; a bound not above max refuses the line.
func readLine(br *bufio.Reader, max int, grow func(head []byte) int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			if grow == nil {
				return nil, errLineTooLong
			}
			line = append(line, frag...)
			m := grow(line)
			if m <= max || len(line) > m+2 {
				return nil, errLineTooLong
			}
			max, grow = m, nil
		} else {
			line = append(line, frag...)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		return nil, errLineTooLong
	}
	return line, nil
}

// literalSpec reports whether line ends with a literal announcement "{n}"
// or "{n+}" and returns the rest of the line before it, the declared length
// (clamped to limit+1 so that a huge number never overflows) and whether it
// is non-synchronising.
func literalSpec(line []byte, limit int) (rest []byte, n int, plus, ok bool) {
	i, end, plus := literalDigits(line)
	if i == end || i == 0 || line[i-1] != '{' || (i > 1 && line[i-2] != ' ' && line[i-2] != '(') {
		return line, 0, false, false
	}
	for _, c := range line[i:end] {
		n = n*10 + int(c-'0')
		if n > limit {
			n = limit + 1
			break
		}
	}
	return line[:i-1], n, plus, true
}

// literalDigits finds the length of a literal announcement ("{n}", "{n+}")
// at the end of line: line[start:end] are its digits, none (start == end)
// when line does not end in digits and "}" or "+}"; plus is the "+". The
// caller checks what stands before the digits.
func literalDigits(line []byte) (start, end int, plus bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, 0, false
	}
	end = len(line) - 1
	if line[end-1] == '+' {
		plus = true
		end--
	}
	start = end
	for start > 0 && line[start-1] >= '0' && line[start-1] <= '9' {
		start--
	}
	return start, end, plus
}

// idLineBound is the grow hook of a command's first line: a line that
// starts as an ID command may go on to maxIDWire.
func idLineBound(head []byte) int {
	if isIDHead(head) {
		return maxIDWire - 2
	}
	return 0
}

// isIDHead reports whether head starts with a valid tag and the command
// name ID, read as tokenize reads them.
func isIDHead(head []byte) bool {
	atomAt := func(i int) (int, int) {
		for i < len(head) && head[i] == ' ' {
			i++
		}
		j := i
		for j < len(head) && isAtomByte(head[j]) {
			j++
		}
		return i, j
	}
	i, j := atomAt(0)
	if !validTag(head[i:j]) {
		return false
	}
	k, m := atomAt(j)
	return m < len(head) && m-k == 2 && asciiUpper(head[k:m]) == "ID"
}

// isIDCommand reports whether the tokens read so far are a valid tag and
// the command name ID.
func isIDCommand(toks []token) bool {
	return len(toks) >= 2 && tagOf(toks) != "" && toks[1].kind == tokAtom && asciiUpper(toks[1].val) == "ID"
}

// readCommand reads one command, literals included.
func (r *reader) readCommand() (*command, error) {
	lineMax, budget, literalMax := r.maxLine, r.maxLine+2*r.maxLiteral, r.maxLiteral
	grow := idLineBound
	isID := false
	var toks []token
	size := 0
	literals := 0
	for {
		line, err := readLine(r.br, lineMax, grow)
		grow = nil
		if errors.Is(err, errLineTooLong) {
			return nil, &replyError{tag: tagOf(toks), status: "BAD", text: "[TOOBIG] Command line too long", bye: true, fatal: true, ended: "line_too_long"}
		}
		if err != nil {
			return nil, err
		}
		size += len(line) + 2
		rest, n, plus, lit := literalSpec(line, max(r.maxLiteral, maxIDValueLen))
		if err := tokenize(rest, &toks); err != nil {
			e := &replyError{tag: tagOf(toks), status: "BAD", text: err.Error()}
			if lit && plus {
				// The literal's data follows whatever we say: we cannot
				// tell it from the next command.
				e.fatal, e.ended = true, "protocol_error"
			}
			return nil, e
		}
		if len(toks) > maxTokens {
			return nil, &replyError{tag: tagOf(toks), status: "BAD", text: "Too many arguments", fatal: true, ended: "protocol_error"}
		}
		if !isID && isIDCommand(toks) {
			isID = true
			budget = max(budget, maxIDWire)
			literalMax = max(literalMax, maxIDValueLen)
		}
		if len(line) > r.maxLine && !isID {
			// Only an ID's first line may pass the general bound.
			return nil, &replyError{tag: tagOf(toks), status: "BAD", text: "[TOOBIG] Command line too long", bye: true, fatal: true, ended: "line_too_long"}
		}
		if isID {
			// The lines after a literal: within what is left of the
			// command's budget, or the general bound if larger.
			lineMax = max(r.maxLine, budget-size-2)
		}
		if !lit {
			break
		}
		if len(toks) < 2 {
			// A literal cannot be the tag or the command name.
			e := &replyError{tag: tagOf(toks), status: "BAD", text: "Literal in place of the command name"}
			if plus {
				e.fatal, e.ended = true, "protocol_error"
			}
			return nil, e
		}
		literals++
		if n > literalMax || size+n > budget || literals > maxLiterals {
			e := &replyError{tag: tagOf(toks), status: "BAD", text: "[TOOBIG] Literal too large", fatal: true, ended: "literal_too_large"}
			if plus {
				e.bye = true
			}
			return nil, e
		}
		if !plus && r.cont != nil {
			if err := r.cont(toks); err != nil {
				return nil, err
			}
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r.br, data); err != nil {
			return nil, err
		}
		if bytes.IndexByte(data, 0) >= 0 {
			// RFC 9051: a literal carries no NUL. The rest of the command
			// is still on the wire: close.
			return nil, &replyError{tag: tagOf(toks), status: "BAD", text: "NUL in literal", fatal: true, ended: "protocol_error"}
		}
		size += n
		toks = append(toks, token{kind: tokLiteral, val: data})
	}
	if len(toks) == 0 {
		return nil, &replyError{status: "BAD", text: "Empty command line"}
	}
	tag := toks[0]
	if tag.kind != tokAtom || !validTag(tag.val) {
		return nil, &replyError{status: "BAD", text: "Invalid tag"}
	}
	if len(toks) < 2 || toks[1].kind != tokAtom {
		return nil, &replyError{tag: string(tag.val), status: "BAD", text: "Missing command"}
	}
	return &command{
		tag:  string(tag.val),
		name: asciiUpper(toks[1].val),
		args: toks[2:],
		size: size,
	}, nil
}

// asciiUpper upper-cases ASCII letters only and leaves every other byte
// as it is (bytes.ToUpper would rewrite invalid UTF-8).
func asciiUpper(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}

// tagOf returns the tag among the tokens read so far if it is a valid one.
func tagOf(toks []token) string {
	if len(toks) > 0 && toks[0].kind == tokAtom && validTag(toks[0].val) {
		return string(toks[0].val)
	}
	return ""
}

// validTag reports whether b is a tag the client can match a reply to: an
// atom without '+' (RFC 9051 tag) of sane length.
func validTag(b []byte) bool {
	if len(b) == 0 || len(b) > 64 {
		return false
	}
	for _, c := range b {
		if c == '+' || c == '*' || c == '%' || c == ']' || c == '{' || c == '\\' || c >= 0x7f {
			return false
		}
	}
	return true
}

// tokenize appends the tokens of one line fragment (without a trailing
// literal announcement) to toks. The text of its error, a malformed
// command, is sent to the client.
func tokenize(line []byte, toks *[]token) error {
	i := 0
	for i < len(line) {
		c := line[i]
		switch {
		case c == ' ':
			i++
		case c == '(':
			*toks = append(*toks, token{kind: tokOpen})
			i++
		case c == ')':
			*toks = append(*toks, token{kind: tokClose})
			i++
		case c == '"':
			val, n, err := unquote(line[i:])
			if err != nil {
				return err
			}
			*toks = append(*toks, token{kind: tokQuoted, val: val})
			i += n
		case c < 0x20 || c == 0x7f:
			return errors.New("Control character in command")
		default:
			j := i
			for j < len(line) && isAtomByte(line[j]) {
				j++
			}
			atom := line[i:j]
			if atom[0] == '{' {
				if _, _, _, ok := literalSpec(atom, 0); ok {
					return errors.New("Literal not at the end of a line")
				}
			}
			*toks = append(*toks, token{kind: tokAtom, val: bytes.Clone(atom)})
			i = j
		}
	}
	return nil
}

// isAtomByte is liberal on purpose: clients such as iOS Mail send
// passwords as bare atoms, and a password is opaque bytes. Only what ends
// an atom in any reading of the grammar is excluded.
func isAtomByte(c byte) bool {
	return c > 0x20 && c != 0x7f && c != '(' && c != ')' && c != '"'
}

// unquote decodes the quoted string at the start of s (s[0] == '"') and
// returns its value and the number of bytes consumed.
func unquote(s []byte) ([]byte, int, error) {
	var val []byte
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			if val == nil {
				val = []byte{}
			}
			return val, i + 1, nil
		case '\\':
			if i+1 >= len(s) || (s[i+1] != '"' && s[i+1] != '\\') {
				return nil, 0, errors.New("Invalid escape in quoted string")
			}
			i++
			val = append(val, s[i])
		case 0:
			return nil, 0, errors.New("NUL in quoted string")
		default:
			val = append(val, c)
		}
	}
	return nil, 0, errors.New("Unterminated quoted string")
}
