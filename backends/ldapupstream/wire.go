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

// withControl returns a [0] Controls element holding the controls of
// controls (nil for none) followed by ctl. It refuses controls that
// already hold a control of type refuse.
func withControl(controls, ctl []byte, refuse ...string) ([]byte, error) {
	var content []byte
	if controls != nil {
		c, _, err := ldapwire.NextElement(controls)
		if err != nil || c.Class != classContext || c.Tag != 0 {
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
		content = c.Content
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
