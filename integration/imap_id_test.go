package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// idPairs returns n pairs of a field of keyLen octets and a value of
// valueLen octets as imaptest's "id" test writes them: digits, the field's
// first ones replaced by a, b, ... z, aa, ab, ... ("a2345...",
// "aa345..."). With 30, 30 and 1024 and the tag "ok", idLine gives that
// test's command byte for byte.
func idPairs(n, keyLen, valueLen int) [][2]string {
	digits := strings.Repeat("1234567890", max(keyLen, valueLen)/10+1)
	pairs := make([][2]string, n)
	for i := range pairs {
		prefix := string(rune('a' + i%26))
		if i >= 26 {
			prefix = "a" + prefix
		}
		pairs[i] = [2]string{(prefix + digits[len(prefix):])[:keyLen], digits[:valueLen]}
	}
	return pairs
}

// idLine writes "tag ID (...)" with quoted strings, or with
// non-synchronising literals when literal is set.
func idLine(tag string, pairs [][2]string, literal bool) string {
	str := func(s string) string {
		if literal {
			return fmt.Sprintf("{%d+}\r\n%s", len(s), s)
		}
		return `"` + s + `"`
	}
	var b strings.Builder
	b.WriteString(tag + " ID (")
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(str(p[0]) + " " + str(p[1]))
	}
	b.WriteString(")\r\n")
	return b.String()
}

// rawIMAP is a hand-written IMAP conversation.
type rawIMAP struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (c *rawIMAP) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("send %.40q (%d bytes): %v", s, len(s), err)
	}
}

// until reads lines up to the one starting with prefix and returns the
// lines read, that one last.
func (c *rawIMAP) until(prefix string) []string {
	c.t.Helper()
	var lines []string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("waiting for %q: %v (read %q)", prefix, err, lines)
		}
		lines = append(lines, strings.TrimSuffix(l, "\r\n"))
		if strings.HasPrefix(l, prefix) {
			return lines
		}
	}
}

// TestIMAPPreLoginID sends the largest ID that RFC 2971 allows (30 pairs of
// 30-octet fields and 1024-octet values, about 32 KB on one line, as
// Dovecot's imaptest "id" test does) before LOGIN, to Dovecot itself and
// through passgate, then logs in through passgate and uses the session.
func TestIMAPPreLoginID(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "OfflineIMAP")
	largest := idLine("ok", idPairs(30, 30, 1024), false)
	if len(largest) < 31<<10 {
		t.Fatalf("the largest ID is %d bytes", len(largest))
	}
	// A legal ID of the same size with standard fields, which passgate
	// keeps and forwards to Dovecot at login, written as literals.
	named := idPairs(30, 30, 1024)
	named[0] = [2]string{"name", "OfflineIMAP"}
	named[1] = [2]string{"version", strings.Repeat("8", 1024)}

	dial := func(t *testing.T, addr string, starttls bool) *rawIMAP {
		t.Helper()
		var conn net.Conn
		var err error
		if starttls {
			conn, err = net.DialTimeout("tcp", addr, patience)
		} else {
			conn, err = tls.DialWithDialer(&net.Dialer{Timeout: patience}, "tcp", addr, env.certs.ClientTLS())
		}
		if err != nil {
			t.Fatalf("connect to %s: %v", addr, err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(patience))
		c := &rawIMAP{t: t, conn: conn, r: bufio.NewReader(conn)}
		c.until("* OK")
		if starttls {
			c.send("s STARTTLS\r\n")
			if l := c.until("s "); !strings.HasPrefix(l[len(l)-1], "s OK") {
				t.Fatalf("STARTTLS: %q", l)
			}
			tc := tls.Client(conn, env.certs.ClientTLS())
			if err := tc.Handshake(); err != nil {
				t.Fatalf("TLS handshake after STARTTLS: %v", err)
			}
			c.conn, c.r = tc, bufio.NewReader(tc)
		}
		return c
	}
	// idOK sends an ID and checks the answer: "* ID (...)" then OK.
	idOK := func(c *rawIMAP, tag, id string) {
		c.t.Helper()
		c.send(id)
		lines := c.until(tag + " ")
		if got := lines[len(lines)-1]; !strings.HasPrefix(got, tag+" OK") {
			c.t.Fatalf("ID of %d bytes answered %q", len(id), lines)
		}
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "* ID ") {
			c.t.Errorf("ID answered %q, want one untagged ID line before OK", lines)
		}
	}

	t.Run("ok/dovecot-direct", func(t *testing.T) {
		c := dial(t, d.IMAPAddr, true)
		idOK(c, "ok", largest)
	})
	for _, tc := range []struct {
		name     string
		starttls bool
	}{{"ok/passgate-starttls", true}, {"ok/passgate-implicit-tls", false}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := p.imapsAddr
			if tc.starttls {
				addr = p.imapAddr
			}
			c := dial(t, addr, tc.starttls)
			idOK(c, "ok", largest)
			// One pair too many: refused, the connection stays.
			c.send(idLine("x", idPairs(31, 30, 1024), false))
			if l := c.until("x "); l[len(l)-1] != "x BAD Invalid ID arguments" {
				t.Fatalf("31 pairs answered %q", l)
			}
			idOK(c, "j", idLine("j", named, true))
			c.send(fmt.Sprintf("a LOGIN alice %q\r\n", pw))
			if l := c.until("a "); !strings.HasPrefix(l[len(l)-1], "a OK") {
				t.Fatalf("LOGIN after the ID: %q", l)
			}
			c.conn.SetDeadline(time.Time{})
			// The session is Dovecot's: use it with a real client.
			greeting := strings.NewReader("* PREAUTH [CAPABILITY IMAP4rev1] logged in\r\n")
			ic := imapclient.New(&preauthConn{Conn: c.conn, r: io.MultiReader(greeting, c.r)}, nil)
			defer ic.Close()
			if err := ic.WaitGreeting(); err != nil {
				t.Fatalf("greeting: %v", err)
			}
			sel, err := ic.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
			if err != nil {
				t.Fatalf("SELECT INBOX after the ID: %v", err)
			}
			if int(sel.NumMessages) < len(d.Messages) {
				t.Fatalf("INBOX holds %d messages, %d seeded", sel.NumMessages, len(d.Messages))
			}
			if got := fetchBody(t, ic, 1); !bytes.Equal(got, d.Messages[0]) {
				t.Errorf("FETCH UID 1: %d bytes, not the %d seeded", len(got), len(d.Messages[0]))
			}
			if err := ic.Logout().Wait(); err != nil {
				t.Errorf("LOGOUT: %v", err)
			}
		})
	}
}
