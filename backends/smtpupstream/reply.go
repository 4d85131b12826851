package smtpupstream

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Bounds on what readReply accepts from an upstream before the connection
// is handed to go-smtp's client. A submission server's EHLO reply has a
// dozen lines of a few dozen bytes.
const (
	maxReplyLines    = 64
	maxReplyLineSize = 1024
)

// errBadReply marks a reply that is not SMTP.
var errBadReply = errors.New("malformed SMTP reply")

// reply is one SMTP reply: its code and its text lines (without the code
// and the separator).
type reply struct {
	Code  int
	Lines []string
}

// String renders the reply for error messages: "550 text / more".
func (r reply) String() string {
	return strconv.Itoa(r.Code) + " " + strings.Join(r.Lines, " / ")
}

// readReply reads one possibly multi-line reply ("250-a", "250-b", "250 c").
// Every line must carry the same three-digit code; lines are limited in
// number and length so that an upstream cannot make passgate buffer
// without bound.
func readReply(r *bufio.Reader) (reply, error) {
	var rep reply
	for i := 0; ; i++ {
		if i >= maxReplyLines {
			return rep, fmt.Errorf("%w: more than %d lines", errBadReply, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			return rep, err
		}
		if len(line) < 3 {
			return rep, fmt.Errorf("%w: short line %q", errBadReply, line)
		}
		code, err := parseCode(line[:3])
		if err != nil {
			return rep, err
		}
		if i == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return rep, fmt.Errorf("%w: code %d inside a %d reply", errBadReply, code, rep.Code)
		}
		last := true
		text := ""
		if len(line) > 3 {
			switch line[3] {
			case '-':
				last = false
			case ' ':
			default:
				return rep, fmt.Errorf("%w: bad separator in %q", errBadReply, line)
			}
			text = line[4:]
		}
		rep.Lines = append(rep.Lines, text)
		if last {
			return rep, nil
		}
	}
}

// readLine reads one CRLF (or LF) terminated line of at most
// maxReplyLineSize bytes.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(b)+len(frag) > maxReplyLineSize+2 {
			return "", fmt.Errorf("%w: line longer than %d bytes", errBadReply, maxReplyLineSize)
		}
		b = append(b, frag...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return "", fmt.Errorf("read reply: %w", err)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	return s, nil
}

func parseCode(s string) (int, error) {
	if len(s) != 3 || s[0] < '2' || s[0] > '5' || s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' {
		return 0, fmt.Errorf("%w: bad code %q", errBadReply, s)
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), nil
}

// extensions parses an EHLO reply's lines after the first into a map of
// upper-case keyword to parameters ("SIZE" → "10240000", "XCLIENT" →
// "NAME ADDR PORT LOGIN").
func extensions(rep reply) map[string]string {
	ext := make(map[string]string)
	if len(rep.Lines) < 2 {
		return ext
	}
	for _, l := range rep.Lines[1:] {
		kw, params, _ := strings.Cut(l, " ")
		if kw == "" {
			continue
		}
		ext[strings.ToUpper(kw)] = params
	}
	return ext
}

// hasAttrs reports whether every attribute of want is named in the
// XCLIENT extension's parameters.
func hasAttrs(params string, want ...string) (missing []string) {
	have := make(map[string]bool)
	for _, f := range strings.Fields(params) {
		have[strings.ToUpper(f)] = true
	}
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	return missing
}

// xtext encodes s as RFC 3461 xtext: printable ASCII except '+' and '='
// goes as is, everything else as +HH.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 33 || c > 126 || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
