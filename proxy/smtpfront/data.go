package smtpfront

import (
	"bytes"
	"io"
	"time"
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
// The message is limited to limit bytes once un-stuffed: a message of
// exactly limit bytes is accepted, as SIZE promises (RFC 1870) and as
// BDAT accepts it, and the first byte over the limit fails the Read with
// a 552. (go-smtp's reader, which this one replaced, failed at the limit
// itself: its 552 came for a message of exactly SIZE bytes too.) A Read
// returns what the buffer holds rather than wait for more.
type dataReader struct {
	r       *reader
	state   int
	limited bool
	n       int64 // bytes left under the limit
	// lineEnds is set once ReadStuffed has been called: Read then
	// returns at the first start of a line it reaches after a byte of
	// the message, where its caller can go on with ReadStuffed.
	lineEnds bool
	// now, when set, bounds how long ReadStuffed gathers lines over
	// several reads: no longer than holdMax from its first read, so that
	// a slow client's lines reach the upstream about as they come.
	now func() time.Time
}

// holdMax is how long ReadStuffed may go on gathering lines it could
// hand out (with dataReader.now set).
const holdMax = time.Second

// gatheredLong tells, before ReadStuffed reads more, whether it has been
// gathering since holdMax; began is when it first read more in this call.
func (d *dataReader) gatheredLong(began *time.Time) bool {
	if d.now == nil {
		return false
	}
	t := d.now()
	if began.IsZero() {
		*began = t
		return false
	}
	return t.Sub(*began) >= holdMax
}

// errDataTooLarge is the reply to a DATA message over the size limit.
func errDataTooLarge() error { return reply(552, 5, 3, 4, "Maximum message size exceeded") }

func (d *dataReader) Read(b []byte) (int, error) {
	if d.limited {
		if d.n <= 0 {
			return d.readAtLimit()
		}
		if int64(len(b)) > d.n {
			b = b[:d.n]
		}
	}
	return d.read(b)
}

// readAtLimit is Read once the message holds limit bytes: it ends with
// io.EOF if the end of data comes next, and fails with a 552 at the
// first byte of the message over the limit (that byte is read and
// dropped, as the rest is by drain).
func (d *dataReader) readAtLimit() (int, error) {
	var over [1]byte
	n, err := d.read(over[:])
	if n > 0 {
		return 0, errDataTooLarge()
	}
	return 0, err
}

// read is Read without the size limit's checks: it un-stuffs into b what
// the buffer holds (reading the connection once when it holds nothing),
// and counts what it returns against the limit.
func (d *dataReader) read(b []byte) (int, error) {
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
// limit, the message's bytes under the size limit (strictly: a run that
// would reach the limit exactly goes through Read, which decides at the
// limit whether the message ends there or fails), and the message
// ends at the same ".\r\n": with io.EOF, the lines are the end of the
// message and that line has been read. Without it, the message goes on
// after the lines (the bytes after them show at least one more byte of
// the message, or its reading fails): the last bytes of a message always
// come with io.EOF, or from Read, as smtpupstream needs them to end its
// data. While that cannot be told yet, or the lines are fewer than
// minRun bytes and the buffer has room, it reads more from the client
// (a message's bytes come without waiting for passgate; the upstream
// then gets fewer, larger writes). No bytes and a nil error mean Read is
// to be called; every error is left to Read, and a line over the limit
// fails in Read as soon as it would have.
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
	if unread := r.end - r.pos; len(r.buf)-r.end < minRun && unread <= r.pos {
		// Room for the run to come, ahead of the reads that gather it;
		// what is left unread at this point is usually a partial line,
		// and never more than was read since the last move, so that no
		// byte is moved more than once on average.
		r.end = copy(r.buf, r.buf[r.pos:r.end])
		r.pos = 0
	}
	var (
		p     = 0      // the lines accepted are buf[pos:pos+p]
		last  = 0      // where the last of them starts, from pos
		line  = r.line // the line limit's count at pos+p
		lines int
		cont  int64     // message bytes in them
		seen  = 0       // buf[pos+p:pos+seen] holds no LF (a partial line)
		began time.Time // when this call read more with lines in hand
	)
	for {
		buf := r.buf[r.pos:r.end]
		var (
			eof, stop bool // the end follows; the line at p is not one to hand out
			partial   []byte
		)
		for {
			rest := buf[p:]
			from := max(seen-p, 0) // a partial line is not searched again
			i := bytes.IndexByte(rest[from:], '\n')
			if i >= 0 {
				i += from
			} else {
				seen = len(buf)
				partial = rest
				// Read fails a partial line over the limit now: no
				// waiting for more.
				stop = r.limit > 0 && line+len(rest) > r.limit
				break
			}
			if r.limit > 0 && line+i > r.limit {
				stop = true // Read fails it, or reads the part under the limit
				break
			}
			if i == 0 || rest[i-1] != '\r' || bytes.IndexByte(rest[:i-1], '\r') >= 0 {
				stop = true // a bare LF, or a bare CR
				break
			}
			size := int64(i + 1)
			if rest[0] == '.' {
				if i == 2 { // ".\r\n"
					eof = true
					break
				}
				if rest[1] != '.' {
					stop = true
					break
				}
				size--
			}
			if budget >= 0 && cont+size > budget {
				stop = true // Read meets the size limit
				break
			}
			cont += size
			lines++
			last, p, line = p, p+i+1, 1
		}
		switch {
		case lines == 0 && (eof || stop):
			return nil, 0, nil // Read reads the end, or that line
		case eof:
			return d.handOut(p, cont, true), int(cont), io.EOF
		case stop:
			return d.handOut(p, cont, false), int(cont), nil
		}
		room := r.err == nil && r.end < len(r.buf)
		if room && (p < minRun || !goesOn(partial)) && (lines == 0 || !d.gatheredLong(&began)) {
			if err := r.more(); err == nil {
				continue
			}
		}
		if lines > 0 && goesOn(partial) {
			return d.handOut(p, cont, false), int(cont), nil
		}
		// The message may end right after the last line: that line
		// stays for the next call, with more input.
		if lines <= 1 {
			return nil, 0, nil
		}
		if r.buf[r.pos+last] == '.' {
			cont -= int64(p-last) - 1
		} else {
			cont -= int64(p - last)
		}
		return d.handOut(last, cont, false), int(cont), nil
	}
}

// minRun is how many bytes of lines ReadStuffed gathers, when it can,
// before handing them out.
const minRun = largeBuffer / 2

// handOut returns the next p bytes of input, lines that stand for n
// bytes of the message, as read; with eof, the ".\r\n" after them too.
func (d *dataReader) handOut(p int, n int64, eof bool) []byte {
	r := d.r
	lines := r.buf[r.pos : r.pos+p]
	r.pos, r.line = r.pos+p, 1
	if eof {
		r.pos += len(".\r\n")
		d.state = stEOF
	}
	if d.limited {
		d.n -= n
	}
	return lines
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
