package ldapfront

// resultBusy is RFC 4511's busy (51).
const resultBusy = 51

// Refusal is what a listener sends to an LDAP connection it refuses
// before serving it (too many connections): an unsolicited notice of
// disconnection (RFC 4511 §4.4.1) with result busy, then it closes.
func Refusal() []byte {
	return envelope(0, extendedResponse(resultBusy, "too many connections, try again later", oidNoticeOfDisconnect, "", false), nil)
}
