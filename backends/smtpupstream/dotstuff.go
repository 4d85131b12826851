package smtpupstream

import (
	"bytes"
	"io"
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

// stuffMessage reads the message from r, writes its DATA encoding to raw
// (the upstream connection, with nothing buffered ahead of it), keeping
// back the last line end, which goes through dot (go-smtp's DATA writer)
// before the caller closes dot: its Close then writes the same end of
// data as if dot had been given the whole message. buf is the read
// buffer; before is called ahead of every write to raw (to set a
// deadline); out is the encoding buffer, reused between messages (it
// grows to 2×len(buf)+2 bytes). When raw is a holder, the part of the
// message read together with its end is held, not written, and the
// caller closes dot before out is used again. It returns the bytes read
// from r; a failed write is a *writeError.
func stuffMessage(r io.Reader, raw io.Writer, dot io.Writer, buf []byte, out *[]byte, before func()) (int64, error) {
	var (
		d    dotStuffer
		held [2]byte
		nh   int
		n    int64
	)
	if cap(*out) < 2*len(buf)+2 {
		*out = make([]byte, 0, 2*len(buf)+2)
	}
	for {
		m, rerr := r.Read(buf)
		if m > 0 {
			n += int64(m)
			o := append((*out)[:0], held[:nh]...)
			o = d.append(o, buf[:m])
			*out = o[:0]
			keep := d.tail()
			nh = copy(held[:], o[len(o)-keep:])
			if body := o[:len(o)-keep]; len(body) > 0 {
				if before != nil {
					before()
				}
				if h, ok := raw.(holder); ok && rerr == io.EOF {
					// The message's last bytes leave with its end.
					h.hold(body)
				} else if _, err := raw.Write(body); err != nil {
					return n, &writeError{err}
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return n, rerr
		}
	}
	if nh > 0 {
		if _, err := dot.Write(held[:nh]); err != nil {
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
