package imapupstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Bounds on what the upstream may send before login. Dovecot's lines are
// far shorter; anything larger is a broken or hostile upstream.
const (
	maxLineLength   = 64 << 10  // one line of a response, without literals
	maxLiteral      = 64 << 10  // one literal in an untagged response
	maxResponseSize = 256 << 10 // one whole response, literals included
)

// response is one server response: untagged ("*"), a continuation request
// ("+") or tagged.
type response struct {
	tag  string // "*", "+" or the command's tag
	kind string // upper-cased first word after the tag: OK, NO, BAD, BYE, PREAUTH, CAPABILITY, ID, …
	text string // everything after the tag (and a space), literals inlined
}

// session is the pre-login conversation on one connection.
type session struct {
	conn    net.Conn
	r       *bufio.Reader
	caps    map[string]bool // nil: not known (no greeting code, or after STARTTLS)
	next    int             // tag counter
	pending []string        // tags written whose tagged responses are still unread
	out     bytes.Buffer    // commands queued for one write
}

func newSession(c net.Conn) *session {
	return &session{conn: c, r: bufio.NewReaderSize(c, 4096)}
}

// tag returns a new command tag.
func (s *session) tag() string {
	s.next++
	return "p" + strconv.Itoa(s.next)
}

// readResponse reads one complete response, following literals.
func (s *session) readResponse() (response, error) {
	var buf []byte
	for {
		line, err := s.readLine()
		if err != nil {
			return response{}, err
		}
		buf = append(buf, line...)
		n, ok := literalSize(line)
		if !ok {
			break
		}
		if n > maxLiteral || len(buf)+int(n) > maxResponseSize {
			return response{}, fmt.Errorf("read response: the upstream sent a literal of %d bytes before login (limit %d)", n, maxLiteral)
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(s.r, lit); err != nil {
			return response{}, fmt.Errorf("read response literal: %w", err)
		}
		buf = append(buf, "\r\n"...)
		buf = append(buf, lit...)
	}
	return parseResponse(buf)
}

// readLine reads one line and returns it without CRLF.
func (s *session) readLine() ([]byte, error) {
	var line []byte
	for {
		frag, err := s.r.ReadSlice('\n')
		if len(line)+len(frag) > maxLineLength {
			return nil, fmt.Errorf("read response: the upstream sent a line over %d bytes", maxLineLength)
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return nil, fmt.Errorf("read response: %w", err)
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return line, nil
}

// literalSize reports whether line ends with a literal announcement
// "{n}" (or "{n+}"), and n.
func literalSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	num := bytes.TrimSuffix(line[i+1:len(line)-1], []byte("+"))
	if len(num) == 0 || len(num) > 10 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	return n, true
}

// parseResponse splits a response into tag, kind and text.
func parseResponse(b []byte) (response, error) {
	line := string(b)
	tag, rest, _ := strings.Cut(line, " ")
	if !validTag(tag) {
		return response{}, fmt.Errorf("read response: malformed line %q", clip(line))
	}
	if tag == "+" {
		return response{tag: "+", text: rest}, nil
	}
	kind, _, _ := strings.Cut(rest, " ")
	return response{tag: tag, kind: strings.ToUpper(kind), text: rest}, nil
}

// validTag reports whether tag is "*", "+" or an IMAP tag (atom
// characters except "+").
func validTag(tag string) bool {
	if tag == "*" || tag == "+" {
		return true
	}
	if tag == "" {
		return false
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		if c <= 0x20 || c >= 0x7f || strings.IndexByte(`(){%*"\]+`, c) >= 0 {
			return false
		}
	}
	return true
}

// greeting reads the server greeting and the capabilities it carries.
func (s *session) greeting() error {
	resp, err := s.readResponse()
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if resp.tag != "*" {
		return fmt.Errorf("greeting: expected an untagged greeting, got %q", clip(resp.text))
	}
	switch resp.kind {
	case "OK":
		s.caps = capsFromCode(resp.text)
		return nil
	case "PREAUTH":
		return errors.New("greeting: the upstream pre-authenticated the connection (PREAUTH); passgate must log in itself, check the upstream's configuration")
	case "BYE":
		return fmt.Errorf("greeting: the upstream said BYE: %q", clip(resp.text))
	default:
		return fmt.Errorf("greeting: unexpected %q", clip(resp.text))
	}
}

// capsFromCode returns the capabilities in a "[CAPABILITY …]" response
// code of an OK text, or nil.
func capsFromCode(text string) map[string]bool {
	_, after, ok := strings.Cut(text, " ")
	if !ok || !strings.HasPrefix(strings.ToUpper(after), "[CAPABILITY ") {
		return nil
	}
	list, _, ok := strings.Cut(after[len("[CAPABILITY "):], "]")
	if !ok {
		return nil
	}
	return capSet(list)
}

func capSet(list string) map[string]bool {
	caps := map[string]bool{}
	for _, c := range strings.Fields(list) {
		caps[strings.ToUpper(c)] = true
	}
	return caps
}

// startTLS asks for STARTTLS and checks that the upstream sent nothing
// more before the handshake (bytes there would be an injection).
func (s *session) startTLS() error {
	if s.caps != nil && !s.caps["STARTTLS"] {
		return errors.New("STARTTLS: the upstream does not advertise STARTTLS (set imap.upstream.tls to implicit or none to match it)")
	}
	tag := s.tag()
	if _, err := fmt.Fprintf(s.conn, "%s STARTTLS\r\n", tag); err != nil {
		return fmt.Errorf("STARTTLS: write: %w", err)
	}
	resp, err := s.await(tag, nil)
	if err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if resp.kind != "OK" {
		return fmt.Errorf("STARTTLS: the upstream answered %q", clip(resp.text))
	}
	if s.r.Buffered() > 0 {
		return errors.New("STARTTLS: the upstream sent data before the TLS handshake (possible injection); refusing the connection")
	}
	return nil
}

// queue adds a command whose answer is read before or along with the
// login's. The caller's command must not carry a synchronising literal.
func (s *session) queue(cmd []byte) {
	tag := s.tag()
	s.out.WriteString(tag)
	s.out.WriteByte(' ')
	s.out.Write(cmd)
	s.out.WriteString("\r\n")
	s.pending = append(s.pending, tag)
}

// flushQueue writes the queued commands and reads all their answers.
func (s *session) flushQueue() error {
	if err := s.write(nil); err != nil {
		return err
	}
	for len(s.pending) > 0 {
		last := s.pending[len(s.pending)-1]
		if _, err := s.await(last, nil); err != nil {
			return err
		}
	}
	return nil
}

// write sends the queued commands followed by b in one write.
func (s *session) write(b []byte) error {
	s.out.Write(b)
	if s.out.Len() == 0 {
		return nil
	}
	_, err := s.conn.Write(s.out.Bytes())
	s.out.Reset()
	if err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// await reads responses until the tagged response to tag, handling
// untagged responses, the tagged answers of queued commands, and
// continuation requests (through onCont, which writes the next part).
func (s *session) await(tag string, onCont func() error) (response, error) {
	for {
		resp, err := s.readResponse()
		if err != nil {
			return response{}, err
		}
		switch resp.tag {
		case "*":
			switch resp.kind {
			case "BYE":
				return response{}, fmt.Errorf("the upstream closed the session: %q", clip(resp.text))
			case "CAPABILITY":
				_, list, _ := strings.Cut(resp.text, " ")
				s.caps = capSet(list)
			}
			continue
		case "+":
			if onCont == nil {
				return response{}, errors.New("the upstream sent an unexpected continuation request")
			}
			if err := onCont(); err != nil {
				return response{}, err
			}
			continue
		}
		i := indexOf(s.pending, resp.tag)
		if i >= 0 {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
		}
		if resp.tag == tag {
			return resp, nil
		}
		if i < 0 {
			return response{}, fmt.Errorf("the upstream answered an unknown tag %q", clip(resp.tag))
		}
		// A queued command (ID, CAPABILITY) that failed is not fatal: the
		// login decides.
	}
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// login sends the login command (after any queued commands, in the same
// write) and reads its answer.
func (s *session) login(cmd *command) (string, error) {
	parts := cmd.parts(s.caps)
	tag := s.tag()
	first := append([]byte(tag+" "), parts[0]...)
	if err := s.write(first); err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	parts = parts[1:]
	onCont := func() error {
		if len(parts) == 0 {
			return errors.New("login: the upstream asked for more than the login command holds")
		}
		p := parts[0]
		parts = parts[1:]
		if _, err := s.conn.Write(p); err != nil {
			return fmt.Errorf("login: write: %w", err)
		}
		return nil
	}
	resp, err := s.await(tag, onCont)
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	switch resp.kind {
	case "OK":
		return resp.text, nil
	case "NO":
		if hasCode(resp.text, "UNAVAILABLE") || hasCode(resp.text, "SERVERBUG") {
			return "", fmt.Errorf("login: temporary failure upstream: %q", clip(resp.text))
		}
		return "", fmt.Errorf("login: %w: %q", ErrRefused, clip(resp.text))
	case "BAD":
		return "", fmt.Errorf("login: %w: %q", ErrRefused, clip(resp.text))
	default:
		return "", fmt.Errorf("login: unexpected answer %q", clip(resp.text))
	}
}

// hasCode reports whether a tagged text ("NO [CODE …] …") carries code.
func hasCode(text, code string) bool {
	_, after, _ := strings.Cut(text, " ")
	if !strings.HasPrefix(after, "[") {
		return false
	}
	c := after[1:]
	if i := strings.IndexAny(c, " ]"); i >= 0 {
		c = c[:i]
	}
	return strings.EqualFold(c, code)
}

// handOver returns the connection for the relay: the bare connection when
// nothing is buffered, else one whose reads drain the buffer first.
func (s *session) handOver() net.Conn {
	if s.r.Buffered() == 0 {
		return s.conn
	}
	return &bufferedConn{Conn: s.conn, r: s.r}
}

// bufferedConn is a connection with bytes already read into r.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

// Read drains the buffered bytes, then reads the connection directly.
func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// clip makes upstream text safe and short for an error message.
func clip(s string) string {
	const max = 200
	b := make([]byte, 0, min(len(s), max))
	for i := 0; i < len(s) && len(b) < max; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	return string(b)
}
