package ldapfront

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// LDAP protocolOp tags (RFC 4511 §4.2–4.14), all of class APPLICATION.
const (
	opBindRequest      = 0
	opBindResponse     = 1
	opUnbindRequest    = 2
	opSearchRequest    = 3
	opSearchEntry      = 4
	opSearchDone       = 5
	opModifyRequest    = 6
	opAddRequest       = 8
	opDelRequest       = 10
	opModifyDNRequest  = 12
	opCompareRequest   = 14
	opAbandonRequest   = 16
	opSearchReference  = 19
	opExtendedRequest  = 23
	opExtendedResponse = 24
)

// Result codes passgate sends itself (RFC 4511 appendix A).
const (
	resultSuccess                 = 0
	resultOperationsError         = 1
	resultProtocolError           = 2
	resultAuthMethodNotSupported  = 7
	resultConfidentialityRequired = 13
	resultInvalidCredentials      = 49
	resultUnavailable             = 52
	resultUnwillingToPerform      = 53
)

// Object identifiers of the extended operations and controls passgate knows.
const (
	oidStartTLS                = "1.3.6.1.4.1.1466.20037"
	oidWhoAmI                  = "1.3.6.1.4.1.4203.1.11.3"
	oidNoticeOfDisconnect      = "1.3.6.1.4.1.1466.20036"
	oidProxiedAuthz            = "2.16.840.1.113730.3.4.18"
	oidProxiedAuthzV1          = "2.16.840.1.113730.3.4.12"
	maxMessageID               = 1<<31 - 1
	classUniversal        byte = 0x00
	classApplication      byte = 0x40
	classContext          byte = 0x80
)

const (
	// errTooLarge: the client declared a message longer than the cap.
	errTooLarge = constError("ldapfront: message exceeds the size limit")
	// errMalformed: the bytes are not an LDAPMessage.
	errMalformed = constError("ldapfront: malformed LDAP message")
)

// readMessage reads one LDAPMessage from r and returns its bytes. The
// length the client declares is checked against max before anything is
// allocated from it, so a 4-byte header cannot make passgate reserve
// gigabytes. Only the definite length form is accepted (RFC 4511 §5.1).
// It does not use ber.ReadPacket, whose limit is a process-wide variable
// shared with the go-ldap client.
func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	var hdr [10]byte
	b, err := r.ReadByte()
	if err != nil {
		return nil, err // io.EOF: clean end between messages
	}
	if b != 0x30 { // universal, constructed, SEQUENCE
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
		return nil, errMalformed // indefinite form, reserved value
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
			if length > max>>8 { // the next shift would pass max
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

// element is one BER element inside a message that is already in memory.
type element struct {
	class       byte // classUniversal, classApplication, classContext, 0xc0 private
	constructed bool
	tag         int
	content     []byte
	raw         []byte // the whole element, header included
}

// nextElement splits the first element off b. Only low tag numbers (< 31)
// and definite lengths occur in LDAP; anything else is malformed.
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

// message is the envelope of an LDAPMessage (RFC 4511 §4.1.1), pointing
// into the bytes it was parsed from.
type message struct {
	id       int64
	op       element // protocolOp, class APPLICATION
	controls []byte  // the whole [0] Controls element, or nil
}

// parseMessage splits an LDAPMessage into its message ID, protocolOp and
// controls without copying.
func parseMessage(raw []byte) (message, error) {
	outer, rest, err := nextElement(raw)
	if err != nil || len(rest) != 0 || outer.class != classUniversal || !outer.constructed || outer.tag != int(ber.TagSequence) {
		return message{}, errMalformed
	}
	idEl, body, err := nextElement(outer.content)
	if err != nil || idEl.class != classUniversal || idEl.constructed || idEl.tag != int(ber.TagInteger) {
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

// parseUint31 decodes a non-negative INTEGER up to 2³¹−1.
func parseUint31(b []byte) (int64, bool) {
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
	if v > maxMessageID {
		return 0, false
	}
	return v, true
}

// controlOIDs lists the controlType of every control in a [0] Controls
// element.
func controlOIDs(controls []byte) ([]string, error) {
	if controls == nil {
		return nil, nil
	}
	c, _, err := nextElement(controls)
	if err != nil {
		return nil, err
	}
	var oids []string
	for b := c.content; len(b) > 0; {
		var ctl element
		ctl, b, err = nextElement(b)
		if err != nil || !ctl.constructed || ctl.class != classUniversal || ctl.tag != int(ber.TagSequence) {
			return nil, errMalformed
		}
		t, _, err := nextElement(ctl.content)
		if err != nil || t.class != classUniversal || t.tag != int(ber.TagOctetString) {
			return nil, errMalformed
		}
		oids = append(oids, string(t.content))
	}
	return oids, nil
}

// appendLength appends a BER definite length.
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

// appendInt appends a non-negative INTEGER element.
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

// envelope builds an LDAPMessage from a message ID and the raw protocolOp
// and controls elements: the relay uses it to put the client's message ID
// on what the upstream answered, without decoding the answer.
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

// resultOp encodes an LDAPResult-shaped protocolOp with the given
// APPLICATION tag. extra elements (an ExtendedResponse's responseName and
// responseValue) follow the three LDAPResult fields.
func resultOp(tag int, code int, diag string, extra ...*ber.Packet) []byte {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ber.Tag(tag), nil, "")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(code), ""))
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, diag, ""))
	for _, e := range extra {
		p.AppendChild(e)
	}
	return p.Bytes()
}

// extendedResponse encodes an ExtendedResponse; name and value are left
// out when empty.
func extendedResponse(code int, diag, name, value string, withValue bool) []byte {
	var extra []*ber.Packet
	if name != "" {
		extra = append(extra, ber.NewString(ber.ClassContext, ber.TypePrimitive, 10, name, ""))
	}
	if withValue {
		extra = append(extra, ber.NewString(ber.ClassContext, ber.TypePrimitive, 11, value, ""))
	}
	return resultOp(opExtendedResponse, code, diag, extra...)
}

// responseTag returns the APPLICATION tag of the response to a request, and
// false for requests that have no response (Unbind, Abandon).
func responseTag(reqTag int) (int, bool) {
	switch reqTag {
	case opBindRequest:
		return opBindResponse, true
	case opSearchRequest:
		return opSearchDone, true
	case opModifyRequest, opAddRequest, opDelRequest, opModifyDNRequest, opCompareRequest:
		return reqTag + 1, true
	case opExtendedRequest:
		return opExtendedResponse, true
	}
	return 0, false
}

// bindRequest is a decoded BindRequest (RFC 4511 §4.2).
type bindRequest struct {
	version  int64
	name     string
	simple   bool   // simple authentication; false: SASL
	password []byte // simple only
}

// maxDecodedOp bounds the BindRequest and ExtendedRequest elements that are
// decoded into asn1-ber packets (a packet tree costs far more memory than
// its bytes). A simple bind's name and password fit many times over.
const maxDecodedOp = 64 << 10

// decodeBind decodes a BindRequest protocolOp with asn1-ber.
func decodeBind(op element) (bindRequest, error) {
	if len(op.raw) > maxDecodedOp {
		return bindRequest{}, errMalformed
	}
	p, err := ber.DecodePacketErr(op.raw)
	if err != nil {
		return bindRequest{}, fmt.Errorf("%w: bind request: %w", errMalformed, err)
	}
	if len(p.Children) != 3 {
		return bindRequest{}, errMalformed
	}
	v, vok := p.Children[0].Value.(int64)
	nameP := p.Children[1]
	name, nok := nameP.Value.(string)
	if !vok || !nok || p.Children[0].Tag != ber.TagInteger || nameP.ClassType != ber.ClassUniversal || nameP.Tag != ber.TagOctetString {
		return bindRequest{}, errMalformed
	}
	auth := p.Children[2]
	req := bindRequest{version: v, name: name}
	switch {
	case auth.ClassType == ber.ClassContext && auth.Tag == 0 && auth.TagType == ber.TypePrimitive:
		req.simple = true
		req.password = auth.Data.Bytes()
	case auth.ClassType == ber.ClassContext && auth.Tag == 3:
		// SASL: not supported; the caller answers authMethodNotSupported.
	default:
		return bindRequest{}, errMalformed
	}
	return req, nil
}

// extendedRequest is a decoded ExtendedRequest (RFC 4511 §4.12).
type extendedRequest struct {
	oid      string
	value    []byte
	hasValue bool
}

// decodeExtended decodes an ExtendedRequest protocolOp with asn1-ber.
func decodeExtended(op element) (extendedRequest, error) {
	if len(op.raw) > maxDecodedOp {
		return extendedRequest{}, errMalformed
	}
	p, err := ber.DecodePacketErr(op.raw)
	if err != nil {
		return extendedRequest{}, fmt.Errorf("%w: extended request: %w", errMalformed, err)
	}
	if len(p.Children) < 1 || len(p.Children) > 2 {
		return extendedRequest{}, errMalformed
	}
	n := p.Children[0]
	if n.ClassType != ber.ClassContext || n.Tag != 0 || n.TagType != ber.TypePrimitive {
		return extendedRequest{}, errMalformed
	}
	req := extendedRequest{oid: n.Data.String()}
	if req.oid == "" {
		return extendedRequest{}, errMalformed
	}
	if len(p.Children) == 2 {
		v := p.Children[1]
		if v.ClassType != ber.ClassContext || v.Tag != 1 || v.TagType != ber.TypePrimitive {
			return extendedRequest{}, errMalformed
		}
		req.value, req.hasValue = v.Data.Bytes(), true
	}
	return req, nil
}

// decodeAbandon returns the message ID an AbandonRequest names.
func decodeAbandon(op element) (int64, error) {
	if op.constructed {
		return 0, errMalformed
	}
	id, ok := parseUint31(op.content)
	if !ok {
		return 0, errMalformed
	}
	return id, nil
}
