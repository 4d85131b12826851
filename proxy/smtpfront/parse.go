package smtpfront

import (
	"errors"
	"fmt"
	"strings"
)

// The parsers below read command lines exactly as go-smtp v0.25.1's
// server did (its parse.go, MIT licence), so that clients see the same
// replies to the same lines; FuzzParseCommand checks them.

// errSyntax is a command line that cannot be parsed.
var errSyntax = errors.New("smtpfront: malformed command")

// parseCmd splits a command line into its upper-case verb and its
// argument. A verb is four letters followed by a space or nothing, except
// that a line starting with STARTTLS (any case, anything after it) is
// STARTTLS. An empty line is the empty verb.
func parseCmd(line string) (cmd, arg string, err error) {
	line = strings.TrimRight(line, "\r\n")
	l := len(line)
	switch {
	case hasPrefixFold(line, "STARTTLS"):
		return "STARTTLS", "", nil
	case l == 0:
		return "", "", nil
	case l < 4:
		return "", "", fmt.Errorf("%w: command too short: %q", errSyntax, line)
	case l == 4:
		return strings.ToUpper(line), "", nil
	case l == 5:
		return "", "", fmt.Errorf("%w: mangled command: %q", errSyntax, line)
	}
	if line[4] != ' ' {
		return "", "", fmt.Errorf("%w: mangled command: %q", errSyntax, line)
	}
	return strings.ToUpper(line[0:4]), strings.TrimSpace(line[5:]), nil
}

// hasPrefixFold is strings.HasPrefix(strings.ToUpper(s), prefix) for an
// upper-case ASCII prefix, as go-smtp tested STARTTLS. (ToUpper maps some
// non-ASCII runes to ASCII, "ſ" to "S"; it is kept for that.)
func hasPrefixFold(s, prefix string) bool {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) && isASCII(s[:len(prefix)]) {
		return true
	}
	if isASCII(s) {
		return false
	}
	return strings.HasPrefix(strings.ToUpper(s), prefix)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// cutPrefixFold is strings.CutPrefix, ignoring case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// param is one ESMTP parameter of MAIL or RCPT.
type param struct{ key, value string }

// parseArgs splits ESMTP parameters ("SIZE=10 BODY=8BITMIME") into keys
// (upper case) and values. go-smtp kept them in a map: a repeated key
// keeps its last value, here at its first place, and the parameters are
// checked in the order the client sent them (go-smtp's order was the
// map's, random).
func parseArgs(s string) ([]param, error) {
	var out []param
	for _, arg := range strings.Fields(s) {
		m := strings.Split(arg, "=")
		var p param
		switch len(m) {
		case 2:
			p = param{strings.ToUpper(m[0]), m[1]}
		case 1:
			p = param{strings.ToUpper(m[0]), ""}
		default:
			return nil, fmt.Errorf("%w: parameter %q", errSyntax, arg)
		}
		found := false
		for i := range out {
			if out[i].key == p.key {
				out[i].value, found = p.value, true
			}
		}
		if !found {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseHelloArgument returns the domain of HELO or EHLO: the argument up
// to its first space.
func parseHelloArgument(arg string) (string, error) {
	domain, _, _ := strings.Cut(arg, " ")
	if domain == "" {
		return "", fmt.Errorf("%w: HELO without a domain", errSyntax)
	}
	return domain, nil
}

// maxClientName bounds the EHLO name passgate passes on.
const maxClientName = 255

// clientName is the EHLO name as the decision, the audit events and the
// app password's last-used client get it: at most 255 bytes, every byte
// that is not printable ASCII (a control byte, a space, a non-ASCII byte)
// replaced with "?". The upstream gets the name only when it is already
// so (the upstream's own check then applies).
func clientName(helo string) string {
	if len(helo) > maxClientName {
		helo = helo[:maxClientName]
	}
	b := []byte(helo)
	for i, c := range b {
		if c <= ' ' || c > '~' {
			b[i] = '?'
		}
	}
	return string(b)
}

// decodeXtext decodes an xtext value (RFC 3461 §4): "+" and two
// upper-case hex digits stand for a byte, which go-smtp allowed up to
// 0x7f.
func decodeXtext(val string) (string, error) {
	if !strings.Contains(val, "+") {
		return val, nil
	}
	var sb strings.Builder
	for i := 0; i < len(val); i++ {
		if val[i] != '+' {
			sb.WriteByte(val[i])
			continue
		}
		if i+2 >= len(val) || !isUpperHex(val[i+1]) || !isUpperHex(val[i+2]) {
			return "", fmt.Errorf("%w: incomplete hexchar", errSyntax)
		}
		v := unhex(val[i+1])<<4 | unhex(val[i+2])
		if v > 0x7f {
			return "", fmt.Errorf("%w: hexchar out of range", errSyntax)
		}
		sb.WriteRune(rune(v))
		i += 2
	}
	return sb.String(), nil
}

func isUpperHex(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

// pathParser reads the address arguments of MAIL and RCPT (RFC 5321
// §4.1.2), leniently as go-smtp did. It also keeps the last mailbox's
// local part (without its quotes and escapes) and domain, for
// relayMailbox.
type pathParser struct {
	s             string
	local, domain string
}

func (p *pathParser) peekByte() (byte, bool) {
	if len(p.s) == 0 {
		return 0, false
	}
	return p.s[0], true
}

func (p *pathParser) readByte() (byte, bool) {
	ch, ok := p.peekByte()
	if ok {
		p.s = p.s[1:]
	}
	return ch, ok
}

func (p *pathParser) acceptByte(ch byte) bool {
	got, ok := p.peekByte()
	if !ok || got != ch {
		return false
	}
	p.s = p.s[1:]
	return true
}

func (p *pathParser) expectByte(ch byte) error {
	if !p.acceptByte(ch) {
		return fmt.Errorf("%w: expected %q", errSyntax, ch)
	}
	return nil
}

// parseReversePath reads MAIL's "<>" or a path.
func (p *pathParser) parseReversePath() (string, error) {
	if strings.HasPrefix(p.s, "<>") {
		p.s = p.s[2:]
		return "", nil
	}
	return p.parsePath()
}

// parsePath reads a path: an optional "<", a source route to drop, a
// mailbox and the ">" that closes a "<".
func (p *pathParser) parsePath() (string, error) {
	hasBracket := p.acceptByte('<')
	if p.acceptByte('@') {
		i := strings.IndexByte(p.s, ':')
		if i < 0 {
			return "", fmt.Errorf("%w: malformed a-d-l", errSyntax)
		}
		p.s = p.s[i+1:]
	}
	mbox, err := p.parseMailbox()
	if err != nil {
		return "", err
	}
	if hasBracket {
		if err := p.expectByte('>'); err != nil {
			return "", err
		}
	}
	return mbox, nil
}

// parseMailbox reads local-part "@" domain; the domain runs to a space,
// a tab or ">", and must not end in "@".
func (p *pathParser) parseMailbox() (string, error) {
	localPart, err := p.parseLocalPart()
	if err != nil {
		return "", err
	} else if localPart == "" {
		return "", fmt.Errorf("%w: local-part is empty", errSyntax)
	}
	if err := p.expectByte('@'); err != nil {
		return "", err
	}
	i := strings.IndexAny(p.s, " \t>")
	if i < 0 {
		i = len(p.s)
	}
	domain := p.s[:i]
	p.s = p.s[i:]
	if domain == "" || strings.HasSuffix(domain, "@") {
		// go-smtp's test: the address ends in "@".
		return "", fmt.Errorf("%w: domain is empty", errSyntax)
	}
	p.local, p.domain = localPart, domain
	return localPart + "@" + domain, nil
}

// parseLocalPart reads a quoted string (without its quotes and escapes)
// or a dot-string.
func (p *pathParser) parseLocalPart() (string, error) {
	var sb strings.Builder
	if p.acceptByte('"') {
		for {
			ch, ok := p.readByte()
			switch ch {
			case '\\':
				ch, ok = p.readByte()
			case '"':
				return sb.String(), nil
			}
			if !ok {
				return "", fmt.Errorf("%w: malformed quoted-string", errSyntax)
			}
			sb.WriteByte(ch)
		}
	}
	for {
		ch, ok := p.peekByte()
		if !ok {
			return sb.String(), nil
		}
		switch ch {
		case '@':
			return sb.String(), nil
		case '(', ')', '<', '>', '[', ']', ':', ';', '\\', ',', '"', ' ', '\t':
			return "", fmt.Errorf("%w: malformed dot-string", errSyntax)
		}
		p.s = p.s[1:]
		sb.WriteByte(ch)
	}
}

// relayMailbox returns the mailbox the parser read last as passgate
// writes it upstream (go-smtp's client puts it between "<" and ">" as it
// is), or false when it cannot be written safely. The parser removed a
// quoted local part's quotes and escapes, so a local part that holds
// anything a dot-string cannot is quoted again (RFC 5321 §4.1.2):
// otherwise MAIL FROM:<"x> AUTH=<ceo@example.test>"@b.test> would reach
// the upstream as parameters of passgate's MAIL, past the AUTH= that the
// session drops. Dots are left as they are (some providers' addresses
// have "..": they change nothing of the line's structure). A control
// byte anywhere (CR, LF, NUL, …), or a byte in the domain that delimits
// something in an address or a command line, is refused.
func (p *pathParser) relayMailbox() (string, bool) {
	if p.local == "" && p.domain == "" {
		return "", true // the null reverse-path <>
	}
	if !validDomain(p.domain) {
		return "", false
	}
	quote := false
	for i := 0; i < len(p.local); i++ {
		c := p.local[i]
		if c < ' ' || c == 0x7f {
			return "", false
		}
		quote = quote || !isAtext(c) && c != '.'
	}
	if !quote {
		return p.local + "@" + p.domain, true
	}
	var sb strings.Builder
	sb.WriteByte('"')
	for i := 0; i < len(p.local); i++ {
		if c := p.local[i]; c == '"' || c == '\\' {
			sb.WriteByte('\\')
		}
		sb.WriteByte(p.local[i])
	}
	sb.WriteString(`"@`)
	sb.WriteString(p.domain)
	return sb.String(), true
}

// isAtext reports whether c may stand unquoted in a local part: RFC
// 5321's atext, and any byte of a UTF-8 sequence (RFC 6531), as go-smtp's
// server let them through.
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c >= 0x80:
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// validDomain reports whether a domain can be relayed as it is: no
// control byte, space, or one of ( ) < > , ; : \ " @ [ ], except inside
// an address literal "[...]" that is the whole domain, where only [ ] \
// are refused (RFC 5321's dcontent).
func validDomain(d string) bool {
	if len(d) >= 2 && d[0] == '[' && d[len(d)-1] == ']' {
		for i := 1; i < len(d)-1; i++ {
			if c := d[i]; c <= ' ' || c == 0x7f || c == '[' || c == ']' || c == '\\' {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(d); i++ {
		if c := d[i]; c <= ' ' || c == 0x7f || strings.IndexByte(`()<>,;:\"@[]`, c) >= 0 {
			return false
		}
	}
	return true
}
