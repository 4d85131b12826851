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
		end := r.allowed(r.end)
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
			} else {
				d.state = stData
			}
		}
		dst[n] = c
		n++
	}
	return n
}

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
