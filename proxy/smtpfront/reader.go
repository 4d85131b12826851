package smtpfront

import (
	"bytes"
	"errors"
	"io"
	"sync"
)

// errTooLongLine is the input of a client whose line passed
// Options.MaxLineLength; the connection ends with "500 5.4.0".
var errTooLongLine = errors.New("smtp: too long a line in input stream")

// Sizes of a reader's buffer: a session starts with a small one (most
// of them send a few command lines), and DATA or BDAT switches to the
// large one, which fills a TLS record or several per read.
const (
	smallBuffer = 4 << 10
	largeBuffer = 64 << 10
)

// reader is the buffered input of one client connection: command lines,
// AUTH responses, message bytes. Every line is bounded as go-smtp's
// server bounded it (its lineLimitReader), a '\n' counting as the first
// byte of the next line, but where the lines are split (readLine, and
// the DATA reader), byte by byte: go-smtp counted the bytes of each
// network read as they arrived, so that where the limit struck depended
// on how the input was cut, and on what followed the line in the same
// read (a BDAT chunk, say). The first byte over the limit fails the
// reader from then on; the bytes before it are read as usual. A BDAT
// chunk is not made of lines: its bytes count for no line. A zero limit
// counts nothing.
//
// A reader is used by its connection's goroutine only.
type reader struct {
	rd    io.Reader
	buf   []byte
	pos   int // buf[pos:end] is unread
	end   int
	limit int
	line  int // the current line's length so far, up to buf[pos]
	err   error
	// before runs ahead of every read from rd: it sends the replies held
	// back and sets the read deadline.
	before func()
	// big tells that buf is a large buffer, from pool; small is the
	// small buffer, kept meanwhile.
	big   bool
	small []byte
	pool  *sync.Pool // of *[largeBuffer]byte; nil: allocate
}

func newReader(rd io.Reader, limit int, before func(), pool *sync.Pool) *reader {
	return &reader{rd: rd, buf: make([]byte, smallBuffer), limit: limit, before: before, pool: pool}
}

// reset makes the reader read from rd from now on, dropping whatever is
// buffered: after STARTTLS, the bytes a client sent behind the command
// in clear must never count as sent under TLS.
func (r *reader) reset(rd io.Reader) {
	r.rd, r.pos, r.end, r.line, r.err = rd, 0, 0, 0, nil
}

// buffered returns the unread bytes.
func (r *reader) buffered() []byte { return r.buf[r.pos:r.end] }

// grow switches to a large buffer (for message data), taken from the
// server's pool, or back to the small one, keeping what is unread: a
// session between messages holds no more than go-smtp's 4 KiB.
func (r *reader) grow(big bool) {
	if big == r.big {
		return
	}
	unread := r.buf[r.pos:r.end]
	if big {
		var nb []byte
		if r.pool != nil {
			if p, ok := r.pool.Get().(*[largeBuffer]byte); ok {
				nb = p[:]
			}
		}
		if nb == nil {
			nb = make([]byte, largeBuffer)
		}
		if len(unread) > len(nb) {
			return // a line longer than a large buffer: keep the one it is in
		}
		r.small = r.buf
		r.end = copy(nb, unread)
		r.pos, r.buf, r.big = 0, nb, true
		return
	}
	if len(unread) > len(r.small) {
		return // keep the large one until what it holds is read
	}
	r.end = copy(r.small, unread)
	if r.pool != nil && len(r.buf) == largeBuffer {
		r.pool.Put((*[largeBuffer]byte)(r.buf))
	}
	r.pos, r.buf, r.small, r.big = 0, r.small, nil, false
}

// fill reads once from the connection, after moving what is unread to
// the start of the buffer (growing it for a line longer than the
// buffer, which the line limit bounds). It returns an error only when it
// read nothing.
func (r *reader) fill() error {
	if r.err != nil {
		return r.err
	}
	if r.pos > 0 {
		r.end = copy(r.buf, r.buf[r.pos:r.end])
		r.pos = 0
	}
	if r.end == len(r.buf) {
		nb := make([]byte, 2*len(r.buf))
		copy(nb, r.buf[:r.end])
		r.buf = nb
	}
	return r.readEnd()
}

// more reads once from the connection, as fill does, but into the free
// end of the buffer when there is one, without moving what is unread to
// its start: ReadStuffed gathers lines over several reads.
func (r *reader) more() error {
	if r.err != nil || r.end == len(r.buf) {
		return r.fill()
	}
	return r.readEnd()
}

// readEnd reads once from the connection into the free end of the
// buffer, which must have one. It returns an error only when it read
// nothing; an error that came with bytes is kept for the next read.
func (r *reader) readEnd() error {
	if r.before != nil {
		r.before()
	}
	n, err := r.rd.Read(r.buf[r.end:])
	r.end += n
	if err != nil {
		r.err = err
		if n == 0 {
			return err
		}
	}
	return nil
}

// tooLong fails the reader: a line passed the limit.
func (r *reader) tooLong() error {
	r.err = errTooLongLine
	return r.err
}

// allowed returns how far, from pos up to end, the input may be read
// before a line passes the limit: every byte adds one to the line's
// length, a '\n' sets it to one, and the byte that makes it more than
// the limit is the first one refused.
func (r *reader) allowed(end int) int {
	if r.limit <= 0 {
		return end
	}
	line, p := r.line, r.pos
	for p < end {
		i := bytes.IndexByte(r.buf[p:end], '\n')
		if i < 0 || line+i > r.limit {
			return p + min(end-p, max(r.limit-line, 0))
		}
		line, p = 1, p+i+1
	}
	return end
}

// counted adds the bytes read from buf[from:pos] to the line's length.
func (r *reader) counted(from int) {
	span := r.buf[from:r.pos]
	if i := bytes.LastIndexByte(span, '\n'); i >= 0 {
		r.line = len(span) - i
	} else {
		r.line += len(span)
	}
}

// readLine returns the next line without its "\n" and one "\r" before it
// (as net/textproto's ReadLine, which go-smtp used). Unlike go-smtp, a
// line cut short by the end of input, or by a read error, is never
// returned: go-smtp ran what had arrived of it as a command (a recipient
// cut in the middle, say). A line over the limit fails as soon as its
// bytes over the limit have arrived.
func (r *reader) readLine() (string, error) {
	if r.err == errTooLongLine {
		return "", r.err
	}
	scanned := 0
	for {
		b := r.buf[r.pos:r.end]
		if i := bytes.IndexByte(b[scanned:], '\n'); i >= 0 {
			i += scanned
			if r.limit > 0 && r.line+i > r.limit {
				return "", r.tooLong()
			}
			line := b[:i]
			r.pos += i + 1
			r.line = 1 // the '\n' counts as the next line's first byte
			line = bytes.TrimSuffix(line, []byte{'\r'})
			return string(line), nil
		}
		if r.limit > 0 && r.line+len(b) > r.limit {
			return "", r.tooLong()
		}
		scanned = len(b) // fill moves the unread bytes to the start of buf
		if err := r.fill(); err != nil {
			return "", err
		}
	}
}

// discard reads and drops n bytes (a BDAT chunk that is refused).
func (r *reader) discard(n int64) error {
	for n > 0 {
		if r.pos == r.end {
			if err := r.fill(); err != nil {
				return err
			}
		}
		k := min(int64(r.end-r.pos), n)
		r.pos += int(k)
		n -= k
	}
	return nil
}
