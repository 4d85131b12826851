package ldapfront

import "github.com/passgate/passgate/backends/ldapwire"

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
	tagInteger            = 0x02
	tagOctetString        = 0x04
	tagEnumerated         = 0x0a
	tagSequence           = 0x10
)

// The framing itself lives in backends/ldapwire, shared with the other end
// of the session: this package calls ldapwire.ReadMessage, NextElement and
// ParseMessage and branches on ldapwire.ErrTooLarge and ErrMalformed.

// element and message are ldapwire's, under this package's names.
type (
	element = ldapwire.Element
	message = ldapwire.Message
)

// walkControls calls fn with the controlType of every control in a [0]
// Controls element (nil for none), in order, until fn returns false.
func walkControls(controls []byte, fn func(oid []byte) bool) error {
	if controls == nil {
		return nil
	}
	c, _, err := ldapwire.NextElement(controls)
	if err != nil {
		return err
	}
	for b := c.Content; len(b) > 0; {
		var ctl element
		ctl, b, err = ldapwire.NextElement(b)
		if err != nil || !ctl.Constructed || ctl.Class != classUniversal || ctl.Tag != tagSequence {
			return ldapwire.ErrMalformed
		}
		t, _, err := ldapwire.NextElement(ctl.Content)
		if err != nil || t.Class != classUniversal || t.Tag != tagOctetString {
			return ldapwire.ErrMalformed
		}
		if !fn(t.Content) {
			return nil
		}
	}
	return nil
}

// hasProxyAuthz reports whether a [0] Controls element holds a proxied
// authorization control of either version, without allocating: it runs
// for every relayed operation after an app-password bind. Malformed
// controls are an error.
func hasProxyAuthz(controls []byte) (bool, error) {
	found := false
	err := walkControls(controls, func(oid []byte) bool {
		found = string(oid) == oidProxiedAuthz || string(oid) == oidProxiedAuthzV1
		return !found
	})
	return found && err == nil, err
}

// envelope is ldapwire's encoder of an LDAPMessage, under this package's name.
func envelope(id int64, op, controls []byte) []byte { return ldapwire.Envelope(id, op, controls) }

// resultOp encodes an LDAPResult-shaped protocolOp with the given
// APPLICATION tag. extra elements (an ExtendedResponse's responseName and
// responseValue) follow the three LDAPResult fields.
func resultOp(tag int, code int, diag string, extra ...byte) []byte {
	body := ldapwire.AppendInt(make([]byte, 0, 16+len(diag)+len(extra)), int64(code))
	body[0] = tagEnumerated
	body = append(octets(octets(body, tagOctetString, ""), tagOctetString, diag), extra...)
	out := ldapwire.AppendLength(append(make([]byte, 0, len(body)+6), classApplication|0x20|byte(tag)), len(body))
	return append(out, body...)
}

// octets appends a primitive element of identifier id holding s.
func octets(dst []byte, id byte, s string) []byte {
	return append(ldapwire.AppendLength(append(dst, id), len(s)), s...)
}

// extendedResponse encodes an ExtendedResponse; name and value are left
// out when empty.
func extendedResponse(code int, diag, name, value string, withValue bool) []byte {
	var extra []byte
	if name != "" {
		extra = octets(extra, classContext|10, name)
	}
	if withValue {
		extra = octets(extra, classContext|11, value)
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

// decodeBind decodes a BindRequest protocolOp without copying the
// password (it points into the message). A version that is not a small
// non-negative INTEGER decodes as 0, which is answered like any version
// but 3.
func decodeBind(op element) (bindRequest, error) {
	v, rest, err := ldapwire.NextElement(op.Content)
	if err != nil || !op.Constructed || v.Class != classUniversal || v.Constructed || v.Tag != tagInteger || len(v.Content) == 0 {
		return bindRequest{}, ldapwire.ErrMalformed
	}
	n, rest, err := ldapwire.NextElement(rest)
	if err != nil || n.Class != classUniversal || n.Constructed || n.Tag != tagOctetString {
		return bindRequest{}, ldapwire.ErrMalformed
	}
	auth, rest, err := ldapwire.NextElement(rest)
	if err != nil || len(rest) != 0 || auth.Class != classContext {
		return bindRequest{}, ldapwire.ErrMalformed
	}
	req := bindRequest{name: string(n.Content)}
	req.version, _ = ldapwire.ParseUint31(v.Content)
	switch {
	case auth.Tag == 0 && !auth.Constructed:
		req.simple, req.password = true, auth.Content
	case auth.Tag == 3:
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

// decodeExtended decodes an ExtendedRequest protocolOp.
func decodeExtended(op element) (extendedRequest, error) {
	n, rest, err := ldapwire.NextElement(op.Content)
	if err != nil || !op.Constructed || n.Class != classContext || n.Tag != 0 || n.Constructed || len(n.Content) == 0 {
		return extendedRequest{}, ldapwire.ErrMalformed
	}
	req := extendedRequest{oid: string(n.Content)}
	if len(rest) > 0 {
		v, tail, err := ldapwire.NextElement(rest)
		if err != nil || len(tail) != 0 || v.Class != classContext || v.Tag != 1 || v.Constructed {
			return extendedRequest{}, ldapwire.ErrMalformed
		}
		req.value, req.hasValue = v.Content, true
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
