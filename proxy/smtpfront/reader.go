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
// server bounded it (its lineLimitReader, under its bufio.Reader): the
// bytes each network read returns are counted as they arrive, a '\n'
// counting as the first byte of the next line, and a read that makes a
// line longer than limit is dropped whole and the reader fails from then
// on. A zero limit counts nothing (BDAT chunks).
//
// A reader is used by its connection's goroutine only.
type reader struct {
	rd    io.Reader
	buf   []byte
	pos   int // buf[pos:end] is unread
	end   int
	limit int
	line  int // the current line's length so far, as go-smtp counted it
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
	if r.before != nil {
		r.before()
	}
	n, err := r.rd.Read(r.buf[r.end:])
	if n > 0 && r.limit > 0 && !r.count(r.buf[r.end:r.end+n]) {
		n, err = 0, errTooLongLine
	}
	r.end += n
	if err != nil {
		r.err = err
		if n == 0 {
			return err
		}
	}
	return nil
}

// count adds p to the line length as go-smtp's lineLimitReader did, byte
// by byte: a '\n' sets it to 0 and every byte adds 1; it reports false
// once the length passes the limit. It scans p a line at a time.
func (r *reader) count(p []byte) bool {
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			r.line += len(p)
			return r.line <= r.limit
		}
		// The bytes before the '\n' end the current line.
		if r.line+i > r.limit {
			return false
		}
		r.line = 0
		p = p[i:] // the '\n' counts as the next line's first byte
		r.line++
		if r.line > r.limit {
			return false
		}
		p = p[1:]
	}
}

// readLine returns the next line without its "\n" and one "\r" before it
// (as net/textproto's ReadLine, which go-smtp used). Unlike go-smtp, a
// line cut short by the end of input, or by a read error, is never
// returned: go-smtp ran what had arrived of it as a command (a recipient
// cut in the middle, say).
func (r *reader) readLine() (string, error) {
	scanned := 0
	for {
		b := r.buf[r.pos:r.end]
		if i := bytes.IndexByte(b[scanned:], '\n'); i >= 0 {
			line := b[:scanned+i]
			r.pos += scanned + i + 1
			line = bytes.TrimSuffix(line, []byte{'\r'})
			return string(line), nil
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
