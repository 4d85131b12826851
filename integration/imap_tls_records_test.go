package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

// recordClient is a raw IMAP client over implicit TLS to passgate whose
// every Write is one TLS record (up to 16 KiB, as Go's and OpenSSL's
// clients send bulk data), so that a test decides what each record holds.
type recordClient struct {
	t    *testing.T
	conn *tls.Conn
	r    *bufio.Reader
}

func dialRecords(t *testing.T, p *passgateInstance) *recordClient {
	t.Helper()
	cfg := env.certs.ClientTLS()
	// Go's client starts with records of about 1 KiB and grows them
	// over the first packets; the test wants full records from the start.
	cfg.DynamicRecordSizingDisabled = true
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: patience}, "tcp", p.imapsAddr, cfg)
	if err != nil {
		t.Fatalf("TLS to passgate: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	// A generous bound on the whole conversation: a relay that stalls
	// ends the test here instead of hanging it.
	conn.SetDeadline(time.Now().Add(2 * patience))
	c := &recordClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	if line := c.line(); !strings.HasPrefix(line, "* OK") {
		t.Fatalf("greeting %q", line)
	}
	return c
}

// record writes p in records of at most 16 KiB (one when it fits).
func (c *recordClient) record(p []byte) {
	c.t.Helper()
	for len(p) > 0 {
		n := min(len(p), 16<<10)
		if _, err := c.conn.Write(p[:n]); err != nil {
			c.t.Fatalf("write a record of %d bytes: %v", n, err)
		}
		p = p[n:]
	}
}

func (c *recordClient) line() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read from passgate: %v (a stalled relay ends at the test's deadline)", err)
	}
	return line
}

// until reads lines until the tagged reply of tag and returns it, with
// how many tagged OK replies of other tags came before it.
func (c *recordClient) until(tag string) (reply string, oks int) {
	c.t.Helper()
	for {
		line := c.line()
		if strings.HasPrefix(line, tag+" ") {
			return line, oks
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] != "*" && f[0] != "+" && f[1] == "OK" {
			oks++
		}
	}
}

// message returns an RFC 5322 message of exactly size bytes whose body
// lines number themselves, so that a lost or repeated chunk shows.
func message(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: relay@example.test\r\nSubject: records\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%08d %s\r\n", i, strings.Repeat("x", 60))
	}
	m := b.Bytes()[:size]
	copy(m[size-2:], "\r\n")
	return m
}

// TestIMAPRelayLargeTLSRecords: a client's bytes reach Dovecot whole,
// whatever TLS records carry them: the LOGIN line followed in the same
// record of up to 16 KiB by pipelined commands, or by an APPEND and its
// literal (more than passgate's 4 KiB pre-login buffer reads of the
// record), and a 1 MiB APPEND in 16 KiB records after login. Each case
// must finish within a generous deadline, and the message APPENDed
// reads back byte for byte.
func TestIMAPRelayLargeTLSRecords(t *testing.T) {
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "dave")
	pw := p.appPassword(t, "dave", "records")
	login := fmt.Sprintf("a LOGIN dave %q\r\n", pw)

	for _, tc := range []struct {
		name string
		size int // of the message APPENDed; 0: none
		run  func(t *testing.T, c *recordClient, box string, msg []byte)
	}{
		{"pipelined-commands-in-login-record", 0, func(t *testing.T, c *recordClient, box string, msg []byte) {
			var b bytes.Buffer
			b.WriteString(login)
			const noops = 1200 // about 14 KiB
			for i := range noops {
				fmt.Fprintf(&b, "n%04d NOOP\r\n", i)
			}
			b.WriteString("z NOOP\r\n")
			if b.Len() > 16<<10 {
				t.Fatalf("the record holds %d bytes, more than TLS allows", b.Len())
			}
			c.record(b.Bytes())
			if reply, oks := c.until("z"); !strings.HasPrefix(reply, "z OK") || oks != noops+1 {
				t.Fatalf("after LOGIN and %d NOOPs in one record: %d tagged OKs then %q; want %d and z OK", noops, oks, reply, noops+1)
			}
		}},
		{"append-literal-in-login-record", 12000, func(t *testing.T, c *recordClient, box string, msg []byte) {
			var b bytes.Buffer
			b.WriteString(login)
			fmt.Fprintf(&b, "b APPEND %s {%d+}\r\n", box, len(msg))
			b.Write(msg)
			b.WriteString("\r\n")
			if b.Len() > 16<<10 {
				t.Fatalf("the record holds %d bytes, more than TLS allows", b.Len())
			}
			c.record(b.Bytes())
			if reply, _ := c.until("b"); !strings.HasPrefix(reply, "b OK") {
				t.Fatalf("APPEND in the login's record: %q", reply)
			}
		}},
		{"append-1MiB-in-16KiB-records", 1 << 20, func(t *testing.T, c *recordClient, box string, msg []byte) {
			c.record([]byte(login))
			if reply, _ := c.until("a"); !strings.HasPrefix(reply, "a OK") {
				t.Fatalf("LOGIN: %q", reply)
			}
			c.record(fmt.Appendf(nil, "b APPEND %s {%d}\r\n", box, len(msg)))
			if line := c.line(); !strings.HasPrefix(line, "+") {
				t.Fatalf("APPEND: %q, want a continuation", line)
			}
			c.record(append(msg, "\r\n"...))
			if reply, _ := c.until("b"); !strings.HasPrefix(reply, "b OK") {
				t.Fatalf("APPEND of 1 MiB: %q", reply)
			}
		}},
		{"append-1MiB-pipelined-in-login-record", 1 << 20, func(t *testing.T, c *recordClient, box string, msg []byte) {
			var b bytes.Buffer
			b.WriteString(login)
			fmt.Fprintf(&b, "b APPEND %s {%d+}\r\n", box, len(msg))
			b.Write(msg)
			b.WriteString("\r\n")
			c.record(b.Bytes())
			if reply, _ := c.until("b"); !strings.HasPrefix(reply, "b OK") {
				t.Fatalf("APPEND of 1 MiB after LOGIN: %q", reply)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			box := fmt.Sprintf("records-%d", time.Now().UnixNano())
			admin := p.dial(t, true, "", nil)
			if err := admin.Login("dave", pw).Wait(); err != nil {
				t.Fatal(err)
			}
			if err := admin.Create(box, nil).Wait(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { admin.Delete(box).Wait() })
			var msg []byte
			if tc.size > 0 {
				msg = message(tc.size)
			}
			c := dialRecords(t, p)
			tc.run(t, c, box, msg)
			c.record([]byte("y LOGOUT\r\n"))
			if reply, _ := c.until("y"); !strings.HasPrefix(reply, "y OK") {
				t.Fatalf("LOGOUT: %q", reply)
			}
			if msg == nil {
				return
			}
			if _, err := admin.Select(box, nil).Wait(); err != nil {
				t.Fatal(err)
			}
			section := &imap.FetchItemBodySection{Peek: true}
			msgs, err := admin.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
			if err != nil || len(msgs) != 1 {
				t.Fatalf("FETCH the message APPENDed: %d messages, %v", len(msgs), err)
			}
			if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
				i := 0
				for i < min(len(got), len(msg)) && got[i] == msg[i] {
					i++
				}
				t.Fatalf("the message reads back as %d bytes, first difference at %d; sent %d", len(got), i, len(msg))
			}
		})
	}
}
