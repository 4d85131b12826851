// Package ldapwire frames LDAP messages (RFC 4511 §4.1.1): it reads one
// LDAPMessage off a stream with a size cap checked before anything is
// allocated, splits it into message ID, protocolOp and controls without
// copying, and encodes lengths, integers and message envelopes.
//
// On the path of a login it is used at both ends of an LDAP session: by
// the listener (proxy/ldapfront), which reads what clients send, and by the
// upstream client (backends/ldapupstream), which relays raw operations to
// the directory and reads its answers. The framing is the same on both
// ends, so it lives once, here, and is fuzzed once. It holds no state,
// does no I/O beyond the reader it is given, and imports no passgate
// package, which is why both a front and a backend may import it.
//
// It does not use go-asn1-ber's ReadPacket, whose size limit is a
// process-wide variable shared with the go-ldap client.
package ldapwire

import (
	"bufio"
	"errors"
	"io"
)

// Error is an error of this package; callers compare with errors.Is.
type Error string

func (e Error) Error() string { return string(e) }

// Errors that callers branch on.
const (
	// ErrTooLarge: the message declares a length over the cap.
	ErrTooLarge Error = "ldapwire: LDAP message exceeds the size limit"
	// ErrMalformed: the bytes are not an LDAPMessage.
	ErrMalformed Error = "ldapwire: malformed LDAP message"
)

// BER classes, and the largest message ID.
const (
	ClassUniversal   byte = 0x00
	ClassApplication byte = 0x40
	ClassContext     byte = 0x80
	MaxMessageID          = 1<<31 - 1
)

// Universal tags used in the envelope.
const (
	tagInteger  = 0x02
	tagSequence = 0x10
)

// ReadMessage reads one LDAPMessage from r and returns its bytes. The
// declared length is checked against max before anything is allocated
// from it, so a 4-byte header cannot make passgate reserve gigabytes. Only
// the definite length form is accepted (RFC 4511 §5.1). io.EOF means a
// clean end between messages; a message cut short is io.ErrUnexpectedEOF.
func ReadMessage(r *bufio.Reader, max int) ([]byte, error) {
	var hdr [10]byte
	b, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if b != 0x30 { // universal, constructed, SEQUENCE
		return nil, ErrMalformed
	}
	hdr[0] = b
	n := 1
	lb, err := r.ReadByte()
	if err != nil {
		return nil, unexpected(err)
	}
	hdr[n] = lb
	n++
	length := 0
	switch {
	case lb < 0x80:
		length = int(lb)
	case lb == 0x80 || lb == 0xff:
		return nil, ErrMalformed // indefinite form, reserved value
	default:
		k := int(lb & 0x7f)
		if k > 8 {
			return nil, ErrMalformed
		}
		for i := 0; i < k; i++ {
			c, err := r.ReadByte()
			if err != nil {
				return nil, unexpected(err)
			}
			hdr[n] = c
			n++
			if length > max>>8 { // the next shift would pass max
				return nil, ErrTooLarge
			}
			length = length<<8 | int(c)
		}
	}
	if length > max {
		return nil, ErrTooLarge
	}
	msg := make([]byte, n+length)
	copy(msg, hdr[:n])
	if _, err := io.ReadFull(r, msg[n:]); err != nil {
		return nil, unexpected(err)
	}
	return msg, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Element is one BER element inside a message that is already in memory.
type Element struct {
	Class       byte // ClassUniversal, ClassApplication, ClassContext, 0xc0 private
	Constructed bool
	Tag         int
	Content     []byte
	Raw         []byte // the whole element, header included
}

// NextElement splits the first element off b. Only low tag numbers (< 31)
// and definite lengths occur in LDAP; anything else is ErrMalformed.
func NextElement(b []byte) (Element, []byte, error) {
	if len(b) < 2 {
		return Element{}, nil, ErrMalformed
	}
	id := b[0]
	e := Element{Class: id & 0xc0, Constructed: id&0x20 != 0, Tag: int(id & 0x1f)}
	if e.Tag == 0x1f {
		return Element{}, nil, ErrMalformed
	}
	lb := b[1]
	i := 2
	length := 0
	switch {
	case lb < 0x80:
		length = int(lb)
	case lb == 0x80 || lb == 0xff:
		return Element{}, nil, ErrMalformed
	default:
		k := int(lb & 0x7f)
		if k > 4 || len(b) < 2+k {
			return Element{}, nil, ErrMalformed
		}
		for ; i < 2+k; i++ {
			length = length<<8 | int(b[i])
		}
		if length < 0 || length > MaxMessageID {
			return Element{}, nil, ErrMalformed
		}
	}
	if len(b)-i < length {
		return Element{}, nil, ErrMalformed
	}
	e.Content = b[i : i+length]
	e.Raw = b[:i+length]
	return e, b[i+length:], nil
}

// Message is the envelope of an LDAPMessage, pointing into the bytes it
// was parsed from.
type Message struct {
	ID       int64
	Op       Element // protocolOp, class APPLICATION
	Controls []byte  // the whole [0] Controls element, or nil
}

// ParseMessage splits an LDAPMessage into its message ID, protocolOp and
// controls without copying.
func ParseMessage(raw []byte) (Message, error) {
	outer, rest, err := NextElement(raw)
	if err != nil || len(rest) != 0 || outer.Class != ClassUniversal || !outer.Constructed || outer.Tag != tagSequence {
		return Message{}, ErrMalformed
	}
	idEl, body, err := NextElement(outer.Content)
	if err != nil || idEl.Class != ClassUniversal || idEl.Constructed || idEl.Tag != tagInteger {
		return Message{}, ErrMalformed
	}
	id, ok := ParseUint31(idEl.Content)
	if !ok {
		return Message{}, ErrMalformed
	}
	op, body, err := NextElement(body)
	if err != nil || op.Class != ClassApplication {
		return Message{}, ErrMalformed
	}
	m := Message{ID: id, Op: op}
	if len(body) > 0 {
		c, tail, err := NextElement(body)
		if err != nil || len(tail) != 0 || c.Class != ClassContext || !c.Constructed || c.Tag != 0 {
			return Message{}, ErrMalformed
		}
		m.Controls = c.Raw
	}
	return m, nil
}

// ParseUint31 decodes a non-negative, minimally encoded INTEGER up to
// 2³¹−1.
func ParseUint31(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 5 || b[0]&0x80 != 0 {
		return 0, false
	}
	if len(b) > 1 && b[0] == 0 && b[1]&0x80 == 0 {
		return 0, false // not minimal
	}
	var v int64
	for _, c := range b {
		v = v<<8 | int64(c)
	}
	if v > MaxMessageID {
		return 0, false
	}
	return v, true
}

// AppendLength appends a BER definite length.
func AppendLength(dst []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(dst, byte(n))
	case n < 0x100:
		return append(dst, 0x81, byte(n))
	case n < 0x10000:
		return append(dst, 0x82, byte(n>>8), byte(n))
	case n < 0x1000000:
		return append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// AppendInt appends a non-negative INTEGER element.
func AppendInt(dst []byte, v int64) []byte {
	var tmp [9]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte(v)
		v >>= 8
		if v == 0 {
			break
		}
	}
	if tmp[i]&0x80 != 0 {
		i--
		tmp[i] = 0
	}
	dst = append(dst, tagInteger)
	dst = AppendLength(dst, len(tmp)-i)
	return append(dst, tmp[i:]...)
}

// Envelope builds an LDAPMessage from a message ID and the raw protocolOp
// and controls elements: a relay uses it to put one side's message ID on
// what the other side sent, without decoding it.
func Envelope(id int64, op, controls []byte) []byte {
	var idb [12]byte
	idEnc := AppendInt(idb[:0], id)
	n := len(idEnc) + len(op) + len(controls)
	out := make([]byte, 0, n+6)
	out = append(out, 0x30)
	out = AppendLength(out, n)
	out = append(out, idEnc...)
	out = append(out, op...)
	return append(out, controls...)
}
