package ldapupstream

import (
	"bufio"
	"errors"
	"io"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// The same small envelope reader as the listener's (proxy/ldapfront keeps
// its own: a backend must not import a front). It bounds what the
// directory may send in one message before allocating it, and never uses
// the process-wide ber.MaxPacketLengthBytes.

const (
	errTooLarge  = constError("ldapupstream: message from the directory exceeds the size limit (a directory answer larger than 16 MiB)")
	errMalformed = constError("ldapupstream: malformed LDAP message from the directory")
)

const (
	classUniversal   byte = 0x00
	classApplication byte = 0x40
	classContext     byte = 0x80
	maxMessageID          = 1<<31 - 1

	opBindRequest      = 0
	opBindResponse     = 1
	opUnbindRequest    = 2
	opSearchEntry      = 4
	opAbandonRequest   = 16
	opSearchReference  = 19
	opExtendedRequest  = 23
	opExtendedResponse = 24
	opIntermediate     = 25
)

func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	var hdr [10]byte
	b, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if b != 0x30 {
		return nil, errMalformed
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
		return nil, errMalformed
	default:
		k := int(lb & 0x7f)
		if k > 8 {
			return nil, errMalformed
		}
		for i := 0; i < k; i++ {
			c, err := r.ReadByte()
			if err != nil {
				return nil, unexpected(err)
			}
			hdr[n] = c
			n++
			if length > max>>8 {
				return nil, errTooLarge
			}
			length = length<<8 | int(c)
		}
	}
	if length > max {
		return nil, errTooLarge
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

type element struct {
	class       byte
	constructed bool
	tag         int
	content     []byte
	raw         []byte
}

func nextElement(b []byte) (element, []byte, error) {
	if len(b) < 2 {
		return element{}, nil, errMalformed
	}
	id := b[0]
	e := element{class: id & 0xc0, constructed: id&0x20 != 0, tag: int(id & 0x1f)}
	if e.tag == 0x1f {
		return element{}, nil, errMalformed
	}
	lb := b[1]
	i := 2
	length := 0
	switch {
	case lb < 0x80:
		length = int(lb)
	case lb == 0x80 || lb == 0xff:
		return element{}, nil, errMalformed
	default:
		k := int(lb & 0x7f)
		if k > 4 || len(b) < 2+k {
			return element{}, nil, errMalformed
		}
		for ; i < 2+k; i++ {
			length = length<<8 | int(b[i])
		}
		if length < 0 || length > maxMessageID {
			return element{}, nil, errMalformed
		}
	}
	if len(b)-i < length {
		return element{}, nil, errMalformed
	}
	e.content = b[i : i+length]
	e.raw = b[:i+length]
	return e, b[i+length:], nil
}

type message struct {
	id       int64
	op       element
	controls []byte
}

func parseMessage(raw []byte) (message, error) {
	outer, rest, err := nextElement(raw)
	if err != nil || len(rest) != 0 || outer.class != classUniversal || !outer.constructed || outer.tag != int(ber.TagSequence) {
		return message{}, errMalformed
	}
	idEl, body, err := nextElement(outer.content)
	if err != nil || idEl.class != classUniversal || idEl.tag != int(ber.TagInteger) {
		return message{}, errMalformed
	}
	id, ok := parseUint31(idEl.content)
	if !ok {
		return message{}, errMalformed
	}
	op, body, err := nextElement(body)
	if err != nil || op.class != classApplication {
		return message{}, errMalformed
	}
	m := message{id: id, op: op}
	if len(body) > 0 {
		c, tail, err := nextElement(body)
		if err != nil || len(tail) != 0 || c.class != classContext || !c.constructed || c.tag != 0 {
			return message{}, errMalformed
		}
		m.controls = c.raw
	}
	return m, nil
}

func parseUint31(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 5 || b[0]&0x80 != 0 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		v = v<<8 | int64(c)
	}
	return v, v <= maxMessageID
}

func appendLength(dst []byte, n int) []byte {
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

func appendInt(dst []byte, v int64) []byte {
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
	dst = append(dst, 0x02)
	dst = appendLength(dst, len(tmp)-i)
	return append(dst, tmp[i:]...)
}

// envelope builds an LDAPMessage around a raw protocolOp and controls.
func envelope(id int64, op, controls []byte) []byte {
	var idb [12]byte
	idEnc := appendInt(idb[:0], id)
	n := len(idEnc) + len(op) + len(controls)
	out := make([]byte, 0, n+6)
	out = append(out, 0x30)
	out = appendLength(out, n)
	out = append(out, idEnc...)
	out = append(out, op...)
	return append(out, controls...)
}

// withControl returns a [0] Controls element holding the controls of
// controls (nil for none) followed by ctl. It refuses controls that
// already hold a control of type refuse.
func withControl(controls, ctl []byte, refuse ...string) ([]byte, error) {
	var content []byte
	if controls != nil {
		c, _, err := nextElement(controls)
		if err != nil || c.class != classContext || c.tag != 0 {
			return nil, errMalformed
		}
		for b := c.content; len(b) > 0; {
			var one element
			one, b, err = nextElement(b)
			if err != nil || !one.constructed {
				return nil, errMalformed
			}
			t, _, err := nextElement(one.content)
			if err != nil || t.tag != int(ber.TagOctetString) {
				return nil, errMalformed
			}
			for _, r := range refuse {
				if string(t.content) == r {
					return nil, errOwnProxyAuthz
				}
			}
		}
		content = c.content
	}
	out := make([]byte, 0, len(content)+len(ctl)+6)
	out = append(out, 0xa0)
	out = appendLength(out, len(content)+len(ctl))
	out = append(out, content...)
	return append(out, ctl...), nil
}

// ldapResult reads resultCode and diagnosticMessage of an LDAPResult-shaped
// protocolOp, and returns the elements after them.
func ldapResult(op element) (code int, diag string, rest []byte, err error) {
	codeEl, b, err := nextElement(op.content)
	if err != nil || codeEl.tag != int(ber.TagEnumerated) || len(codeEl.content) == 0 || len(codeEl.content) > 4 {
		return 0, "", nil, errMalformed
	}
	v, err := ber.ParseInt64(codeEl.content)
	if err != nil {
		return 0, "", nil, errMalformed
	}
	_, b, err = nextElement(b) // matchedDN
	if err != nil {
		return 0, "", nil, errMalformed
	}
	d, b, err := nextElement(b)
	if err != nil {
		return 0, "", nil, errMalformed
	}
	return int(v), string(d.content), b, nil
}
