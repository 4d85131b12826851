package imapfront

import "bytes"

// maxLiteralDigits bounds the size of a literal the framer accepts from
// the upstream (19 digits fit an int64).
const maxLiteralDigits = 19

// responseFramer follows an IMAP server's response stream (RFC 9051 §7)
// for relay.Run, so that passgate's own "* BYE" at shutdown or
// revocation lands between two responses, never inside one or inside a
// literal: a response ends at a CRLF that does not end in a literal
// announcement ("{n}" or "~{n}"), after which n octets of literal follow
// and the response goes on.
//
// Two things it cannot follow make it give up for the rest of the
// session (no BYE, a plain close): compression (RFC 4978), after which
// the stream is deflate bytes — a line that ends in "DEFLATE" or
// "compression" is taken for the reply that starts it, false alarms
// costing only the BYE — and a literal announcement too long to parse.
// A response text that ends in "{n}" by chance (a mailbox name the
// client chose, echoed in a NO) is taken for a literal; the framer finds
// the next line end after those n octets, and at worst misplaces the BYE
// of the session of the client that chose the name.
type responseFramer struct {
	literal  int64  // literal octets still to come
	tail     []byte // the end of the current line, up to tailMax bytes
	boundary bool   // the stream so far ends where a response ends
	broken   bool   // an announcement that cannot be parsed: no boundary ever again
}

// tailMax is the longest line end the framer keeps: "~{" + 19 digits +
// "+}" + "\r" fit.
const tailMax = 32

func newResponseFramer() *responseFramer {
	return &responseFramer{boundary: true, tail: make([]byte, 0, tailMax)}
}

// Feed implements relay.Framer.
func (f *responseFramer) Feed(p []byte) bool {
	for len(p) > 0 && !f.broken {
		if f.literal > 0 {
			n := min(int64(len(p)), f.literal)
			p = p[n:]
			f.literal -= n
			f.boundary = false
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			f.keep(p)
			f.boundary = false
			return false
		}
		f.keep(p[:i])
		p = p[i+1:]
		n, isLiteral, ok := literalAtEnd(f.tail, len(f.tail) == tailMax)
		compressing := startsCompression(f.tail)
		f.tail = f.tail[:0]
		switch {
		case !ok || compressing:
			f.broken = true
		case isLiteral:
			f.literal = n
			f.boundary = false
		default:
			f.boundary = true
		}
	}
	return f.boundary && !f.broken
}

// keep appends p to the line's tail, keeping the last tailMax bytes.
func (f *responseFramer) keep(p []byte) {
	if len(p) >= tailMax {
		f.tail = append(f.tail[:0], p[len(p)-tailMax:]...)
		return
	}
	if over := len(f.tail) + len(p) - tailMax; over > 0 {
		f.tail = append(f.tail[:0], f.tail[over:]...)
	}
	f.tail = append(f.tail, p...)
}

// startsCompression reports whether the end of a line may be the reply
// to COMPRESS DEFLATE ("a OK DEFLATE active", Dovecot's "OK Begin
// compression.").
func startsCompression(tail []byte) bool {
	t := bytes.TrimRight(tail, "\r. ")
	for _, end := range []string{"deflate active", "compression"} {
		if len(t) >= len(end) && bytes.EqualFold(t[len(t)-len(end):], []byte(end)) {
			return true
		}
	}
	return false
}

// literalAtEnd reports whether line (without its LF) ends in a literal
// announcement, and its length. ok is false for an announcement whose
// length does not parse (too many digits), and for a line that may be
// one but was cut (cut: only its last bytes were kept).
func literalAtEnd(line []byte, cut bool) (n int64, isLiteral, ok bool) {
	line = bytes.TrimSuffix(line, []byte("\r"))
	start, end, _ := literalDigits(line)
	switch {
	case start == end:
		return 0, false, true
	case start == 0:
		// Digits back to the start of what was kept: with the line cut,
		// its brace may have been cut off.
		return 0, cut, !cut
	case line[start-1] != '{':
		return 0, false, true
	}
	if end-start > maxLiteralDigits {
		return 0, true, false
	}
	for _, c := range line[start:end] {
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, true, false
		}
		n = n*10 + d
	}
	return n, true, true
}
