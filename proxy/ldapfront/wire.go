package ldapfront

import (
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/passgate/passgate/backends/ldapwire"
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
	oidStartTLS           = "1.3.6.1.4.1.1466.20037"
	oidWhoAmI             = "1.3.6.1.4.1.4203.1.11.3"
	oidNoticeOfDisconnect = "1.3.6.1.4.1.1466.20036"
	oidProxiedAuthz       = "2.16.840.1.113730.3.4.18"
	oidProxiedAuthzV1     = "2.16.840.1.113730.3.4.12"
	maxMessageID          = ldapwire.MaxMessageID
	classUniversal        = ldapwire.ClassUniversal
	classApplication      = ldapwire.ClassApplication
	classContext          = ldapwire.ClassContext
)

// The framing itself lives in backends/ldapwire, shared with the other end
// of the session: this package calls ldapwire.ReadMessage, NextElement and
// ParseMessage and branches on ldapwire.ErrTooLarge and ErrMalformed.

// element and message are ldapwire's, under this package's names.
type (
	element = ldapwire.Element
	message = ldapwire.Message
)

// controlOIDs lists the controlType of every control in a [0] Controls
// element.
func controlOIDs(controls []byte) ([]string, error) {
	if controls == nil {
		return nil, nil
	}
	c, _, err := ldapwire.NextElement(controls)
	if err != nil {
		return nil, err
	}
	var oids []string
	for b := c.Content; len(b) > 0; {
		var ctl element
		ctl, b, err = ldapwire.NextElement(b)
		if err != nil || !ctl.Constructed || ctl.Class != classUniversal || ctl.Tag != int(ber.TagSequence) {
			return nil, ldapwire.ErrMalformed
		}
		t, _, err := ldapwire.NextElement(ctl.Content)
		if err != nil || t.Class != classUniversal || t.Tag != int(ber.TagOctetString) {
			return nil, ldapwire.ErrMalformed
		}
		oids = append(oids, string(t.Content))
	}
	return oids, nil
}

// envelope is ldapwire's encoder of an LDAPMessage, under this package's name.
func envelope(id int64, op, controls []byte) []byte { return ldapwire.Envelope(id, op, controls) }

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

// decodeOp decodes a BindRequest or ExtendedRequest protocolOp (what names
// it in an error) with asn1-ber, up to maxDecodedOp bytes.
func decodeOp(op element, what string) (*ber.Packet, error) {
	if len(op.Raw) > maxDecodedOp {
		return nil, ldapwire.ErrMalformed
	}
	p, err := ber.DecodePacketErr(op.Raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ldapwire.ErrMalformed, what, err)
	}
	return p, nil
}

// decodeBind decodes a BindRequest protocolOp with asn1-ber.
func decodeBind(op element) (bindRequest, error) {
	p, err := decodeOp(op, "bind request")
	if err != nil {
		return bindRequest{}, err
	}
	if len(p.Children) != 3 {
		return bindRequest{}, ldapwire.ErrMalformed
	}
	v, vok := p.Children[0].Value.(int64)
	nameP := p.Children[1]
	name, nok := nameP.Value.(string)
	if !vok || !nok || p.Children[0].Tag != ber.TagInteger || nameP.ClassType != ber.ClassUniversal || nameP.Tag != ber.TagOctetString {
		return bindRequest{}, ldapwire.ErrMalformed
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
		return bindRequest{}, ldapwire.ErrMalformed
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
	p, err := decodeOp(op, "extended request")
	if err != nil {
		return extendedRequest{}, err
	}
	if len(p.Children) < 1 || len(p.Children) > 2 {
		return extendedRequest{}, ldapwire.ErrMalformed
	}
	n := p.Children[0]
	if n.ClassType != ber.ClassContext || n.Tag != 0 || n.TagType != ber.TypePrimitive {
		return extendedRequest{}, ldapwire.ErrMalformed
	}
	req := extendedRequest{oid: n.Data.String()}
	if req.oid == "" {
		return extendedRequest{}, ldapwire.ErrMalformed
	}
	if len(p.Children) == 2 {
		v := p.Children[1]
		if v.ClassType != ber.ClassContext || v.Tag != 1 || v.TagType != ber.TypePrimitive {
			return extendedRequest{}, ldapwire.ErrMalformed
		}
		req.value, req.hasValue = v.Data.Bytes(), true
	}
	return req, nil
}

// decodeAbandon returns the message ID an AbandonRequest names.
func decodeAbandon(op element) (int64, error) {
	if op.Constructed {
		return 0, ldapwire.ErrMalformed
	}
	id, ok := ldapwire.ParseUint31(op.Content)
	if !ok {
		return 0, ldapwire.ErrMalformed
	}
	return id, nil
}
