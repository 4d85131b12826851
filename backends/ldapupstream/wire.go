package ldapupstream

import (
	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/passgate/passgate/backends/ldapwire"
)

// The envelope reader is backends/ldapwire's, shared with the listener: it
// bounds what the directory may send in one message before allocating it,
// and never uses the process-wide ber.MaxPacketLengthBytes.

const (
	classUniversal   = ldapwire.ClassUniversal
	classApplication = ldapwire.ClassApplication
	classContext     = ldapwire.ClassContext
	maxMessageID     = ldapwire.MaxMessageID

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

// The framing itself lives in backends/ldapwire, shared with the other end
// of the session: this package calls ldapwire.ReadMessage, NextElement and
// ParseMessage and branches on ldapwire.ErrTooLarge and ErrMalformed.

// element and message are ldapwire's, under this package's names.
type (
	element = ldapwire.Element
	message = ldapwire.Message
)

// Encoders of ldapwire, under this package's names.
func appendLength(dst []byte, n int) []byte         { return ldapwire.AppendLength(dst, n) }
func appendInt(dst []byte, v int64) []byte          { return ldapwire.AppendInt(dst, v) }
func envelope(id int64, op, controls []byte) []byte { return ldapwire.Envelope(id, op, controls) }

// controlsContent checks a [0] Controls element (nil for none) and
// returns its content, the controls one after another. It refuses
// controls that already hold a control of type refuse.
func controlsContent(controls []byte, refuse ...string) ([]byte, error) {
	if controls == nil {
		return nil, nil
	}
	c, rest, err := ldapwire.NextElement(controls)
	if err != nil || len(rest) != 0 || c.Class != classContext || !c.Constructed || c.Tag != 0 {
		return nil, ldapwire.ErrMalformed
	}
	for b := c.Content; len(b) > 0; {
		var one element
		one, b, err = ldapwire.NextElement(b)
		if err != nil || !one.Constructed {
			return nil, ldapwire.ErrMalformed
		}
		t, _, err := ldapwire.NextElement(one.Content)
		if err != nil || t.Tag != int(ber.TagOctetString) {
			return nil, ldapwire.ErrMalformed
		}
		for _, r := range refuse {
			if string(t.Content) == r {
				return nil, errOwnProxyAuthz
			}
		}
	}
	return c.Content, nil
}

// proxyAuthzLen is the length of the control that appendProxyAuthz
// appends for authzID.
func proxyAuthzLen(authzID string) int {
	n := octetsLen(len(OIDProxiedAuthz)) + 3 + octetsLen(len(authzID))
	return 1 + lengthLen(n) + n
}

// appendProxyAuthz appends the RFC 4370 proxied authorization control
// naming authzID, critical, as go-ldap's NewControlString encodes it:
// SEQUENCE { controlType, criticality TRUE, controlValue }.
func appendProxyAuthz(dst []byte, authzID string) []byte {
	n := octetsLen(len(OIDProxiedAuthz)) + 3 + octetsLen(len(authzID))
	dst = appendLength(append(dst, 0x30), n)
	dst = appendOctets(dst, OIDProxiedAuthz)
	dst = append(dst, 0x01, 0x01, 0xff)
	return appendOctets(dst, authzID)
}

// appendRequest appends the LDAPMessage of a request with message ID id,
// protocolOp op and the content of its [0] Controls element (nil: no
// controls), with the proxied authorization control naming authzID added
// after the client's controls. One buffer, no element tree: this runs
// for every relayed search.
func appendRequest(dst []byte, id int64, op, controls []byte, authzID string) []byte {
	ctl := len(controls) + proxyAuthzLen(authzID)
	dst = ldapwire.AppendEnvelopeHeader(dst, id, len(op)+1+lengthLen(ctl)+ctl)
	dst = append(dst, op...)
	dst = appendLength(append(dst, 0xa0), ctl)
	dst = append(dst, controls...)
	return appendProxyAuthz(dst, authzID)
}

// appendOctets appends an OCTET STRING holding s.
func appendOctets(dst []byte, s string) []byte {
	return append(appendLength(append(dst, byte(ber.TagOctetString)), len(s)), s...)
}

// octetsLen is the length of an OCTET STRING of n bytes.
func octetsLen(n int) int { return 1 + lengthLen(n) + n }

// lengthLen is the length of the BER encoding of length n.
func lengthLen(n int) int {
	var b [5]byte
	return len(appendLength(b[:0], n))
}

// ldapResult reads resultCode and diagnosticMessage of an LDAPResult-shaped
// protocolOp, and returns the elements after them.
func ldapResult(op element) (code int, diag string, rest []byte, err error) {
	codeEl, b, err := ldapwire.NextElement(op.Content)
	if err != nil || codeEl.Tag != int(ber.TagEnumerated) || len(codeEl.Content) == 0 || len(codeEl.Content) > 4 {
		return 0, "", nil, ldapwire.ErrMalformed
	}
	v, err := ber.ParseInt64(codeEl.Content)
	if err != nil {
		return 0, "", nil, ldapwire.ErrMalformed
	}
	_, b, err = ldapwire.NextElement(b) // matchedDN
	if err != nil {
		return 0, "", nil, ldapwire.ErrMalformed
	}
	d, b, err := ldapwire.NextElement(b)
	if err != nil {
		return 0, "", nil, ldapwire.ErrMalformed
	}
	return int(v), string(d.Content), b, nil
}
