package imapupstream

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// FuzzReadResponse feeds arbitrary upstream bytes to the response reader:
// it must never panic, never return a response over the size limit, and
// the tag of each response must be the first word of its line.
func FuzzReadResponse(f *testing.F) {
	for _, seed := range []string{
		"* OK [CAPABILITY IMAP4rev1 SASL-IR] ready\r\n",
		"* ID (\"name\" {7}\r\np1 OK\r\n)\r\np1 OK Logged in\r\n",
		"+ \r\np1 NO [AUTHENTICATIONFAILED] no\r\n",
		"* OK {999999999}\r\n",
		"* OK {3+}\r\nabc\r\n",
		"\r\n\r\n",
		"p1 OK {1}\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &session{r: bufio.NewReader(bytes.NewReader(data))}
		for range 100 {
			resp, err := s.readResponse()
			if err != nil {
				return
			}
			if len(resp.text) > maxResponseSize+maxLineLength {
				t.Fatalf("response of %d bytes", len(resp.text))
			}
			if resp.tag == "" || strings.ContainsAny(resp.tag, " \r\n") {
				t.Fatalf("bad tag %q", resp.tag)
			}
			_ = capsFromCode(resp.text)
			_ = hasCode(resp.text, "UNAVAILABLE")
		}
	})
}
