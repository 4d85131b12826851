package smtpupstream

import (
	"bytes"
	"io"
	"time"
)

// States of dotStuffer, as net/textproto's dot writer names them.
const (
	dotBegin     = iota // start of the message
	dotBeginLine        // just after a line end
	dotCR               // just after a CR
	dotData             // anywhere else
)

// dotStuffer encodes a message for DATA exactly as net/textproto's
// DotWriter (which go-smtp's client uses) does — a "." at the start of a
// line is doubled, a bare LF becomes CRLF, a bare CR is kept — but a run
// of ordinary bytes at a time instead of one byte at a time, which made
// the DotWriter the largest cost of relaying a big message.
type dotStuffer struct{ state int }

// append appends the encoding of p to dst.
func (d *dotStuffer) append(dst, p []byte) []byte {
	for len(p) > 0 {
		switch d.state {
		case dotBegin, dotBeginLine:
			d.state = dotData
			if p[0] == '.' {
				dst = append(dst, '.')
			}
		case dotCR:
			d.state = dotData
			if p[0] == '\n' {
				d.state = dotBeginLine
			}
			dst = append(dst, p[0])
			p = p[1:]
			continue
		}
		i := indexLineEnd(p)
		if i < 0 {
			return append(dst, p...)
		}
		dst = append(dst, p[:i]...)
		if p[i] == '\r' {
			d.state = dotCR
			dst = append(dst, '\r')
		} else {
			d.state = dotBeginLine
			dst = append(dst, '\r', '\n')
		}
		p = p[i+1:]
	}
	return dst
}

// indexLineEnd is the index of the first CR or LF in p, or -1: as
// bytes.IndexAny(p, "\r\n"), which tests one byte at a time against a
// set, but with two vectorised IndexByte scans of what is usually one
// line (its CR sits just before its LF).
func indexLineEnd(p []byte) int {
	i := bytes.IndexByte(p, '\n')
	head := p
	if i >= 0 {
		head = p[:i]
	}
	if j := bytes.IndexByte(head, '\r'); j >= 0 {
		return j
	}
	return i
}

// tail is how many bytes at the end of what append produced must pass
// through the DotWriter itself, so that its Close ends the message as it
// would have: the line end just written, or a CR.
func (d *dotStuffer) tail() int {
	switch d.state {
	case dotBeginLine:
		return 2 // "\r\n"
	case dotCR:
		return 1 // "\r"
	}
	return 0
}

// StuffedReader is a message source that can also hand out runs of its
// lines already in DATA's encoding, as proxy/smtpfront's DATA reader can:
// its client sent the message in that encoding, and where stuffing the
// lines again gives the bytes the client sent, Data sends those bytes as
// they are instead of un-stuffing and stuffing them again.
type StuffedReader interface {
	io.Reader
	// ReadStuffed is called at the start of a line of the message (at
	// its start, or after a line end). It returns, in p, whole lines of
	// the message in DATA's encoding: each ends with CRLF and holds no
	// other CR or LF, and each that starts with "." starts with "..";
	// they stand for the next n bytes of the message (p less the first
	// dot of every line that starts with one). Unless err is io.EOF,
	// the message goes on after p (or fails to be read); with io.EOF, p
	// is the end of the message. p is valid until the next call. Where
	// the next bytes are not such lines, it returns no bytes and a nil
	// error, and the caller Reads; it never returns another error
	// (Read reports it).
	ReadStuffed() (p []byte, n int, err error)
}

// holdMax is how long the encoding of bytes read from the client may
// wait for more before it is written (stuffMessage with a clock).
const holdMax = time.Second

// atLineStart tells that what comes next starts a line of the encoding:
// lines handed out by a StuffedReader can be sent as they are.
func (d *dotStuffer) atLineStart() bool { return d.state == dotBegin || d.state == dotBeginLine }

// stuffMessage reads the message from r and writes its DATA encoding to
// raw (the upstream connection, with nothing buffered ahead of it),
// keeping back the last line end, which goes through dot (go-smtp's DATA
// writer) before the caller closes dot: its Close then writes the same
// end of data as if dot had been given the whole message. buf is the
// read buffer; before is called ahead of every write to raw (to set a
// deadline); out is the encoding buffer, reused between messages (it
// grows to 2×len(buf)+2 bytes). The encoding of what is read goes
// out once len(buf)/2 bytes of it are pending, and at the end. When raw
// is a holder, the last write is held, not written, and the caller
// closes dot before out is used again. It returns the bytes read from r;
// a failed write is a *writeError.
//
// With now set, bytes wait in out for more no longer than holdMax: after
// a read from r, what has been pending that long is written, so that a
// slow client's bytes reach the upstream about as they come (Postfix
// times out a client that sends nothing for smtpd_timeout, 10 s under
// stress) and not only once half of buf has gathered.
//
// When r is a StuffedReader, the runs of lines it hands out at a line
// start are written as they are, without a copy (but for the last one,
// and for one that follows pending bytes), and the rest of the message
// is read and stuffed as above.
func stuffMessage(r io.Reader, raw io.Writer, dot io.Writer, buf []byte, out *[]byte, before func(), now func() time.Time) (int64, error) {
	var (
		d         dotStuffer
		n         int64
		heldSince time.Time // when pending's oldest byte that may be written was read
	)
	if cap(*out) < 2*len(buf)+2 {
		*out = make([]byte, 0, 2*len(buf)+2)
	}
	flushAt := max(len(buf)/2, 1)
	// pending is the encoding not written yet, in out.
	pending := (*out)[:0]
	defer func() { *out = pending[:0] }()
	write := func(body []byte, last bool) error {
		if len(body) == 0 {
			return nil
		}
		if before != nil {
			before()
		}
		if h, ok := raw.(holder); ok && last {
			// The message's last bytes leave with its end.
			h.hold(body)
			return nil
		}
		if _, err := raw.Write(body); err != nil {
			return &writeError{err}
		}
		return nil
	}
	// flush writes what is pending but for the line end or CR that may
	// be the message's last bytes.
	flush := func() error {
		keep := len(pending) - d.tail()
		if err := write(pending[:keep], false); err != nil {
			return err
		}
		pending = pending[:copy(pending, pending[keep:])]
		return nil
	}
	// held writes what has been pending for holdMax, after a read.
	held := func() error {
		if now == nil {
			return nil
		}
		if len(pending) <= d.tail() {
			heldSince = time.Time{}
			return nil
		}
		t := now()
		switch {
		case heldSince.IsZero():
			heldSince = t
		case t.Sub(heldSince) >= holdMax:
			heldSince = time.Time{}
			return flush()
		}
		return nil
	}
	sr, _ := r.(StuffedReader)
	for {
		if sr != nil && d.atLineStart() {
			p, m, rerr := sr.ReadStuffed()
			if len(p) > 0 {
				n += int64(m)
				d.state = dotBeginLine
				switch {
				case rerr == io.EOF && len(pending)+len(p) <= cap(pending):
					// The end: written below, from out (a holder appends
					// the end of data to what it holds, which must not be
					// the reader's buffer).
					pending = append(pending, p...)
				case rerr == io.EOF:
					// Too large for out: written as it is, but for its
					// last line end, which goes through dot below.
					if err := write(pending, false); err != nil {
						return n, err
					}
					pending = append(pending[:0], p[len(p)-2:]...)
					if err := write(p[:len(p)-2], false); err != nil {
						return n, err
					}
				case len(pending)+len(p) < flushAt:
					// A short run is gathered as Read's bytes are: lines
					// that take turns between runs and Read (a bare LF,
					// a line of one dot) must not cost a write, and
					// towards a TLS upstream a record, per line.
					pending = append(pending, p...)
				case len(pending) == 0:
					if err := write(p, false); err != nil {
						return n, err
					}
				default:
					// The message goes on after p: no line end of it,
					// nor of what is pending, needs keeping back.
					rest := p
					if len(pending)+len(p) <= cap(pending) {
						pending = append(pending, p...)
						rest = nil
					}
					if err := write(pending, false); err != nil {
						return n, err
					}
					pending = pending[:0]
					if err := write(rest, false); err != nil {
						return n, err
					}
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return n, rerr // not one the interface returns
			}
			if len(p) > 0 {
				if err := held(); err != nil {
					return n, err
				}
				continue
			}
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			n += int64(m)
			if len(pending)+2*m > cap(pending) {
				// Room for the encoding (at most twice what was read).
				if err := flush(); err != nil {
					return n, err
				}
			}
			pending = d.append(pending, buf[:m])
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, rerr
		}
		if len(pending) >= flushAt {
			if err := flush(); err != nil {
				return n, err
			}
		}
		if err := held(); err != nil {
			return n, err
		}
	}
	var tail [2]byte
	keep := len(pending) - d.tail()
	nt := copy(tail[:], pending[keep:])
	if err := write(pending[:keep], true); err != nil {
		return n, err
	}
	if nt > 0 {
		if _, err := dot.Write(tail[:nt]); err != nil {
			return n, &writeError{err}
		}
	}
	return n, nil
}

// holder is a raw writer that can keep the last bytes of a message, as
// they are (without copying them), and send them with its next Write:
// the end of data that go-smtp's writer sends when it is closed. A short
// message then leaves in one write (one TLS record, one packet) instead
// of two.
type holder interface{ hold(p []byte) }

// writeError is a failed write to the upstream, as opposed to a failed
// read of the message.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }
