package smtpfront

import (
	"bytes"
	"io"
)

// States of dataReader, as go-smtp's server (after net/textproto) named
// them.
const (
	stBeginLine = iota // at the start of a line, and of the message
	stDot              // after a "." at the start of a line
	stDotCR            // after ".\r" at the start of a line
	stCR               // after a "\r"
	stData             // inside a line
	stEOF              // after the ".\r\n" that ends the message
)

// dataReader reads a DATA message from the client: it removes the dot
// stuffing and stops at the end of data, byte for byte as go-smtp v0.25's
// server did, so that the upstream gets the same message for every input
// (smtpupstream then stuffs it again for the upstream's DATA):
//
//   - the message ends only at CRLF "." CRLF (or with ".\r\n" at its
//     very start); a bare LF or bare CR never starts a line, so "\n.\n"
//     or "\r.\r" is message text, and stays so upstream, where a bare LF
//     becomes CRLF and the dot is doubled (no SMTP smuggling);
//   - a "." at the start of a line is removed, and so is the "\r" of a
//     ".\r" at the start of a line that is not followed by "\n";
//   - a "\r" right after a "\r" is text that does not start a line end.
//
// Unlike go-smtp, which ran this state machine one ReadByte at a time, it
// works on the reader's buffer: inside a line it copies up to the next
// "\r" found with bytes.IndexByte.
//
// The message is limited to limit bytes once un-stuffed: as in go-smtp,
// a Read after limit bytes fails with a 552 (so a message of exactly
// limit bytes fails too). A Read returns what the buffer holds rather
// than wait for more.
type dataReader struct {
	r       *reader
	state   int
	limited bool
	n       int64 // bytes left under the limit
	// lineEnds is set once ReadStuffed has been called: Read then
	// returns at the first start of a line it reaches after a byte of
	// the message, where its caller can go on with ReadStuffed.
	lineEnds bool
}

// errDataTooLarge is the reply to a DATA message over the size limit.
func errDataTooLarge() error { return reply(552, 5, 3, 4, "Maximum message size exceeded") }

func (d *dataReader) Read(b []byte) (int, error) {
	if d.limited {
		if d.n <= 0 {
			return 0, errDataTooLarge()
		}
		if int64(len(b)) > d.n {
			b = b[:d.n]
		}
	}
	var (
		n   int
		err error
	)
	r := d.r
	for n < len(b) && d.state != stEOF {
		if r.err == errTooLongLine {
			err = r.err
			break
		}
		if r.pos == r.end {
			if n > 0 {
				break
			}
			if err = r.fill(); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				break
			}
		}
		to := r.end
		if d.lineEnds {
			// Read ends at the next line start: the line limit is
			// checked up to the next LF (not over the whole buffer at
			// every line).
			if i := bytes.IndexByte(r.buf[r.pos:r.end], '\n'); i >= 0 {
				to = r.pos + i + 1
			}
		}
		end := r.allowed(to)
		if end == r.pos {
			if n == 0 {
				err = r.tooLong()
			} else {
				_ = r.tooLong() // the next Read fails
			}
			break
		}
		from := r.pos
		n += d.unstuff(b[n:], end)
		r.counted(from)
		if d.lineEnds && d.state == stBeginLine && n > 0 {
			break
		}
	}
	if err == nil && d.state == stEOF {
		err = io.EOF
	}
	if d.limited {
		d.n -= int64(n)
	}
	return n, err
}

// unstuff decodes the buffered input, up to buf[end], into dst until dst
// is full, the input up to end is read or the message ends, and returns
// the bytes written.
func (d *dataReader) unstuff(dst []byte, end int) int {
	r := d.r
	n := 0
	for n < len(dst) && r.pos < end && d.state != stEOF {
		if d.state == stData {
			src := r.buf[r.pos:min(end, r.pos+len(dst)-n)]
			i := bytes.IndexByte(src, '\r')
			if i < 0 {
				n += copy(dst[n:], src)
				r.pos += len(src)
				continue
			}
			n += copy(dst[n:], src[:i+1])
			r.pos += i + 1
			d.state = stCR
			continue
		}
		c := r.buf[r.pos]
		r.pos++
		switch d.state {
		case stBeginLine:
			switch c {
			case '.':
				d.state = stDot
				continue
			case '\r':
				d.state = stCR
			default:
				d.state = stData
			}
		case stDot:
			if c == '\r' {
				d.state = stDotCR
				continue
			}
			d.state = stData
		case stDotCR:
			if c == '\n' {
				d.state = stEOF
				continue
			}
			d.state = stData
		case stCR:
			if c == '\n' {
				d.state = stBeginLine
				if d.lineEnds {
					dst[n] = c
					return n + 1
				}
			} else {
				d.state = stData
			}
		}
		dst[n] = c
		n++
	}
	return n
}

// ReadStuffed hands out, at the start of a line, a run of whole lines of
// the message as the client sent them, which are also what the upstream
// is to receive (smtpupstream.StuffedReader): lines that end with CRLF,
// hold no other CR or LF, and do not start with a single dot. For such a
// line, removing the dot stuffing (as Read does) and stuffing it again
// (as smtpupstream does) gives back its bytes: a line "..x" is read as
// ".x" and sent as "..x" again; a line ".x" (read as "x") is left to
// Read, and so are bare LF and bare CR, which the upstream's stuffing
// changes. n is the number of message bytes the lines stand for (the
// lines less the dot removed from each that starts with "..").
//
// The lines are read as Read reads them: every byte under the line
// limit, the message's bytes under the size limit (strictly, so that
// the limit itself is met by Read and fails as it did), and the message
// ends at the same ".\r\n": with io.EOF, the lines are the end of the
// message and that line has been read. Without it, the message goes on
// after the lines (the bytes after them show at least one more byte of
// the message, or its reading fails): the last bytes of a message always
// come with io.EOF, or from Read, as smtpupstream needs them to end its
// data. Where that cannot be told yet, the reader reads more from the
// client, as Read would have. No bytes and a nil error mean Read is to
// be called; every error is left to Read.
func (d *dataReader) ReadStuffed() ([]byte, int, error) {
	r := d.r
	d.lineEnds = true
	if d.state == stEOF {
		return nil, 0, io.EOF
	}
	if d.state != stBeginLine {
		return nil, 0, nil
	}
	budget := int64(-1) // message bytes the lines may hold; -1: no limit
	if d.limited {
		if d.n <= 1 {
			return nil, 0, nil
		}
		budget = d.n - 1
	}
	for r.err == nil {
		start := r.pos
		p, n, eof := d.scanLines(budget)
		if p > start || eof {
			if eof && p == start {
				return nil, 0, nil // the end comes first: Read ends the message
			}
			lines := r.buf[start:p]
			r.pos, r.line = p, 1
			if eof {
				r.pos += len(".\r\n")
				d.state = stEOF
			}
			if d.limited {
				d.n -= int64(n)
			}
			var err error
			if eof {
				err = io.EOF
			}
			return lines, n, err
		}
		// Not one line can be handed out yet: read more, unless what is
		// buffered is not such a line or fills the buffer.
		if p < 0 || (r.pos == 0 && r.end == len(r.buf)) {
			return nil, 0, nil
		}
		if err := r.fill(); err != nil {
			return nil, 0, nil
		}
	}
	return nil, 0, nil
}

// scanLines finds, from r.pos, the lines ReadStuffed may hand out: it
// returns where they end (r.pos if none), the message bytes they hold,
// and whether the message's end ".\r\n" comes right after them. p is -1
// when no line can be handed out and reading more would not change that.
func (d *dataReader) scanLines(budget int64) (p int, n int, eof bool) {
	r := d.r
	buf := r.buf[:r.end]
	p, line := r.pos, r.line
	var (
		lines   int   // lines accepted, up to p
		cont    int64 // message bytes in them
		bad     bool  // the line at p can never be handed out
		decided bool  // the bytes at p show that the message goes on
	)
	for {
		rest := buf[p:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			decided = goesOn(rest)
			if r.limit > 0 && line+len(rest) > r.limit {
				bad = true // Read fails it now: no waiting for more
			}
			break
		}
		if r.limit > 0 && line+i > r.limit {
			bad, decided = true, true // Read fails it, or reads the part under the limit
			break
		}
		if i == 0 || rest[i-1] != '\r' || bytes.IndexByte(rest[:i-1], '\r') >= 0 {
			bad, decided = true, true // a bare LF, or a bare CR
			break
		}
		size := int64(i + 1)
		if rest[0] == '.' {
			if i == 2 { // ".\r\n"
				eof = true
				break
			}
			if rest[1] != '.' {
				bad, decided = true, true
				break
			}
			size--
		}
		if budget >= 0 && cont+size > budget {
			bad, decided = true, true // Read meets the size limit
			break
		}
		cont += size
		lines++
		p += i + 1
		line = 1
	}
	switch {
	case eof:
		return p, int(cont), true
	case lines == 0 && bad:
		return -1, 0, false
	case decided:
		return p, int(cont), false
	}
	// The message may end right after the last line: that line stays for
	// the next call, with more input.
	if lines == 0 {
		return r.pos, 0, false
	}
	q := p - 1
	for q > r.pos && buf[q-1] != '\n' {
		q--
	}
	if buf[q] == '.' {
		cont -= int64(p-q) - 1
	} else {
		cont -= int64(p - q)
	}
	return q, int(cont), false
}

// goesOn tells whether rest, the start of a line, shows a byte of the
// message, as opposed to the start of ".\r\n" (or nothing).
func goesOn(rest []byte) bool {
	switch {
	case len(rest) == 0:
		return false
	case rest[0] != '.':
		return true
	case len(rest) == 1:
		return false
	case rest[1] != '\r':
		return true
	case len(rest) == 2:
		return false
	}
	return rest[2] != '\n'
}

// endReadsAtLines makes each Read return at the first line start it
// reaches, as after a ReadStuffed: prefixed calls it while its caller
// Reads the byte read ahead.
func (d *dataReader) endReadsAtLines() { d.lineEnds = true }

// drain reads the rest of the message, without a limit, so that the
// next command is read after it; it stops at the first error.
func (d *dataReader) drain() {
	d.limited = false
	var scratch [4096]byte
	for {
		if _, err := d.Read(scratch[:]); err != nil {
			return
		}
	}
}

// bdatReader reads a message sent in BDAT chunks (RFC 3030), as one
// stream, on the connection's goroutine: once a chunk is read it answers
// "250 2.0.0 Continue" and reads the next commands itself (next), so the
// upstream's DATA can stay open between chunks without a goroutine or a
// pipe. Commands that go on with the message (BDAT, NOOP, a refused MAIL,
// …) are answered there; one that ends it (RSET, EHLO, QUIT, STARTTLS,
// an oversized chunk) and any read error stop the reader, which fails:
// the upstream aborts the message, and the connection runs that command
// once Data has returned.
type bdatReader struct {
	r    *reader
	left int64 // bytes of the current chunk still to read
	last bool  // the current chunk is the last
	// next answers the chunk just read and reads commands up to the next
	// chunk; it returns an error when the message is to be aborted.
	next func(b *bdatReader) error
	// err is why the message stopped early: errBDATInterrupted with the
	// command line in pending, or a read error.
	err     error
	pending string
}

func (b *bdatReader) Read(p []byte) (int, error) {
	for b.left == 0 {
		if b.last {
			return 0, io.EOF
		}
		if b.err != nil {
			return 0, b.err
		}
		if err := b.next(b); err != nil {
			if err == io.EOF {
				// The client went away between chunks: that must never
				// read as the end of the message.
				err = io.ErrUnexpectedEOF
			}
			b.err = err
			return 0, err
		}
	}
	r := b.r
	if r.pos == r.end {
		// A chunk is not made of lines: none of it counts for the line
		// limit.
		if err := r.fill(); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			b.err = err
			return 0, err
		}
	}
	k := int(min(int64(len(p)), int64(r.end-r.pos), b.left))
	copy(p, r.buf[r.pos:r.pos+k])
	r.pos += k
	b.left -= int64(k)
	return k, nil
}

// skip drops the rest of the current chunk (after the upstream failed).
func (b *bdatReader) skip() error {
	err := b.r.discard(b.left)
	b.left = 0
	return err
}
