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
// its framing does no I/O beyond the reader it is given, and it imports
// no passgate package, which is why both a front and a backend may
// import it.
//
// Both ends read and write their sockets the same way too, through
// backends/sockwire's Socket.
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
// The bytes returned are the caller's.
func ReadMessage(r *bufio.Reader, max int) ([]byte, error) {
	raw, shared, err := readMessage(r, max)
	if shared {
		raw = append([]byte(nil), raw...)
	}
	return raw, err
}

// ReadMessageShared is ReadMessage without the copy: a message that fits
// in r's buffer is returned as a slice of that buffer, valid only until
// the next read from r (a relay that passes each message on before it
// reads the next allocates nothing per message). A longer message is
// read into memory of its own. The checks and errors are ReadMessage's.
func ReadMessageShared(r *bufio.Reader, max int) ([]byte, error) {
	raw, _, err := readMessage(r, max)
	return raw, err
}

// readMessage reads one message, leaving it in r's buffer (shared) when
// it fits there. The header is peeked one byte at a time, as it arrives,
// so that a length over max is refused before the rest of the header or
// any content is waited for.
func readMessage(r *bufio.Reader, max int) (raw []byte, shared bool, err error) {
	b, err := r.Peek(1)
	if err != nil {
		return nil, false, err
	}
	if b[0] != 0x30 { // universal, constructed, SEQUENCE
		return nil, false, ErrMalformed
	}
	b, err = r.Peek(2)
	if err != nil {
		return nil, false, unexpected(err)
	}
	lb := b[1]
	hdr := 2
	length := 0
	switch {
	case lb < 0x80:
		length = int(lb)
	case lb == 0x80 || lb == 0xff:
		return nil, false, ErrMalformed // indefinite form, reserved value
	default:
		k := int(lb & 0x7f)
		if k > 8 {
			return nil, false, ErrMalformed
		}
		for i := 0; i < k; i++ {
			b, err = r.Peek(hdr + 1)
			if err != nil {
				return nil, false, unexpected(err)
			}
			if length > max>>8 { // the next shift would pass max
				return nil, false, ErrTooLarge
			}
			length = length<<8 | int(b[hdr])
			hdr++
		}
	}
	if length > max {
		return nil, false, ErrTooLarge
	}
	total := hdr + length
	if total <= r.Size() {
		raw, err = r.Peek(total)
		if err != nil {
			return nil, false, unexpected(err)
		}
		r.Discard(total)
		return raw, true, nil
	}
	msg := make([]byte, total)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, false, unexpected(err)
	}
	return msg, false, nil
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
	return AppendEnvelope(make([]byte, 0, EnvelopeLen(id, len(op)+len(controls))), id, op, controls)
}

// AppendEnvelope is Envelope appending to dst, so that a writer can put
// several messages into one buffer of its own and send them in one write.
func AppendEnvelope(dst []byte, id int64, op, controls []byte) []byte {
	dst = AppendEnvelopeHeader(dst, id, len(op)+len(controls))
	dst = append(dst, op...)
	return append(dst, controls...)
}

// AppendEnvelopeHeader appends the start of an LDAPMessage whose
// protocolOp and controls, n bytes in all, the caller appends next.
func AppendEnvelopeHeader(dst []byte, id int64, n int) []byte {
	var idb [12]byte
	idEnc := AppendInt(idb[:0], id)
	dst = append(dst, 0x30)
	dst = AppendLength(dst, len(idEnc)+n)
	return append(dst, idEnc...)
}

// EnvelopeLen is the length of the LDAPMessage that AppendEnvelope
// builds from message ID id and n bytes of protocolOp and controls.
func EnvelopeLen(id int64, n int) int {
	var idb [12]byte
	body := len(AppendInt(idb[:0], id)) + n
	return 1 + len(AppendLength(idb[:0], body)) + body
}
