package ldapupstream

import (
	"bufio"
	"errors"
	"github.com/passgate/passgate/backends/ldapwire"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// The envelope reader is backends/ldapwire's, shared with the listener: it
// bounds what the directory may send in one message before allocating it,
// and never uses the process-wide ber.MaxPacketLengthBytes.

const (
	errTooLarge  = constError("ldapupstream: message from the directory exceeds the size limit (a directory answer larger than 16 MiB)")
	errMalformed = constError("ldapupstream: malformed LDAP message from the directory")
)

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
// of the session; these adapters keep this package's own types and errors.

func wireErr(err error) error {
	switch {
	case errors.Is(err, ldapwire.ErrTooLarge):
		return errTooLarge
	case errors.Is(err, ldapwire.ErrMalformed):
		return errMalformed
	}
	return err
}

// readMessage reads one LDAPMessage with ldapwire.ReadMessage: the declared
// length is checked against max before anything is allocated.
func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	b, err := ldapwire.ReadMessage(r, max)
	return b, wireErr(err)
}

// element and message are ldapwire's, under this package's names.
type (
	element = ldapwire.Element
	message = ldapwire.Message
)

// nextElement splits the first element off b.
func nextElement(b []byte) (element, []byte, error) {
	e, rest, err := ldapwire.NextElement(b)
	return e, rest, wireErr(err)
}

// parseMessage splits an LDAPMessage into its message ID, protocolOp and
// controls without copying.
func parseMessage(raw []byte) (message, error) {
	m, err := ldapwire.ParseMessage(raw)
	return m, wireErr(err)
}

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
		c, _, err := nextElement(controls)
		if err != nil || c.Class != classContext || c.Tag != 0 {
			return nil, errMalformed
		}
		for b := c.Content; len(b) > 0; {
			var one element
			one, b, err = nextElement(b)
			if err != nil || !one.Constructed {
				return nil, errMalformed
			}
			t, _, err := nextElement(one.Content)
			if err != nil || t.Tag != int(ber.TagOctetString) {
				return nil, errMalformed
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
	codeEl, b, err := nextElement(op.Content)
	if err != nil || codeEl.Tag != int(ber.TagEnumerated) || len(codeEl.Content) == 0 || len(codeEl.Content) > 4 {
		return 0, "", nil, errMalformed
	}
	v, err := ber.ParseInt64(codeEl.Content)
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
	return int(v), string(d.Content), b, nil
}
