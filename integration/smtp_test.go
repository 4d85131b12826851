package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/backends/smtpupstream"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
)

// TestSMTPPostfixDirect checks the harness: Postfix takes a submission
// with a Dovecot password and delivers it to Dovecot over LMTP.
func TestSMTPPostfixDirect(t *testing.T) {
	e := smtpEnv(t)
	c, err := smtp.DialStartTLS(e.postfix.SubmissionAddr, e.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "dave", e.dovecot.Users["dave"])); err != nil {
		t.Fatal(err)
	}
	subject := fmt.Sprintf("direct %d", time.Now().UnixNano())
	msg := testMessage("dave@example.test", "dave@example.test", subject, 500)
	if err := c.SendMail("dave@example.test", []string{"dave@example.test"}, bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	waitMailbox(t, e, "dave", subject)
}

// TestSMTPAppPasswordStartTLSLogin: an enforced user submits with an app
// password over STARTTLS with AUTH LOGIN (Outlook), through XCLIENT; the
// message arrives, and Postfix logs the real client address and the login.
func TestSMTPAppPasswordStartTLSLogin(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	conn := smtpDial(t, p.Addr, "127.0.0.77", nil, false)
	c, err := smtp.NewClientStartTLS(conn, e.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("outlook.client.test"); err != nil {
		t.Fatal(err)
	}
	if ok, size := c.Extension("SIZE"); !ok || size != fmt.Sprint(104857600) {
		t.Errorf("SIZE %q, want the upstream's 104857600", size)
	}
	if err := c.Auth(sasl.NewLoginClient("alice", p.Secrets.aliceApp)); err != nil {
		t.Fatalf("AUTH LOGIN with an app password: %v", err)
	}
	subject := fmt.Sprintf("xclient %d", time.Now().UnixNano())
	msg := testMessage("alice@example.test", "bob@example.test", subject, 3000)
	if err := c.SendMail("alice@example.test", []string{"bob@example.test"}, bytes.NewReader(msg)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	got := waitMailbox(t, e, "bob", subject)
	if !bytes.Contains(got, msg[bytes.Index(msg, []byte("\r\n\r\n")):]) {
		t.Errorf("delivered body differs from the one sent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := e.postfix.WaitLog(ctx, "client=unknown[127.0.0.77]", "sasl_method=XCLIENT, sasl_username=alice"); err != nil {
		t.Fatal(err)
	}
	// passgate's own line for the session.
	deadline := time.Now().Add(patience)
	for !strings.Contains(p.Log.String(), `"msg":"smtp session"`) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{`"user":"alice"`, `"credential":"app-password:`, `"messages":1`, `"remote_addr":"127.0.0.77:`, `"outcome":"relayed"`} {
		if !strings.Contains(p.Log.String(), want) {
			t.Errorf("passgate log lacks %s:\n%s", want, p.Log.String())
		}
	}
	if strings.Contains(p.Log.String(), p.Secrets.aliceApp) {
		t.Error("the app password reached passgate's log")
	}
}

// TestSMTPImplicitTLSPlainMaster: implicit TLS with AUTH PLAIN, logged in
// upstream as a Dovecot master user with authzid.
func TestSMTPImplicitTLSPlainMaster(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: masterUpstream(e)})
	conn := smtpDial(t, p.TLSAddr, "127.0.0.78", e.certs.ClientTLS(), true)
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", p.Secrets.aliceApp)); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	subject := fmt.Sprintf("master %d", time.Now().UnixNano())
	msg := testMessage("alice@example.test", "carol@example.test", subject, 1000)
	if err := c.SendMail("alice@example.test", []string{"carol@example.test"}, bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	waitMailbox(t, e, "carol", subject)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := e.postfix.WaitLog(ctx, "sasl_method=PLAIN, sasl_username=alice"); err != nil {
		t.Fatal(err)
	}
}

// smtpRaw is a line-level client on passgate after STARTTLS and EHLO, for
// checking exact reply bytes.
type smtpRaw struct {
	t *testing.T
	w io.Writer
	r *bufio.Reader
}

func (c *smtpRaw) send(s string) { fmt.Fprintf(c.w, "%s\r\n", s) }

func (c *smtpRaw) reply() string {
	c.t.Helper()
	var all string
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read: %v (%q)", err, all)
		}
		all += l
		if len(l) < 4 || l[3] != '-' {
			return all
		}
	}
}

func (c *smtpRaw) expect(prefix string) {
	c.t.Helper()
	if got := c.reply(); !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("reply %q, want %q", got, prefix)
	}
}

func smtpRawSession(t *testing.T, p *passgateSMTP, src string) *smtpRaw {
	t.Helper()
	e := smtpEnv(t)
	conn := smtpDial(t, p.Addr, src, nil, false)
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(patience))
	c := &smtpRaw{t: t, w: conn, r: bufio.NewReader(conn)}
	c.expect("220 ")
	c.send("EHLO printer.test")
	c.expect("250")
	c.send("STARTTLS")
	c.expect("220 ")
	tc := tlsClient(conn, e)
	c.w, c.r = tc, bufio.NewReader(tc)
	c.send("EHLO printer.test")
	c.expect("250")
	return c
}

// smtpAliceSession is smtpRawSession logged in as alice with her app
// password.
func smtpAliceSession(t *testing.T, p *passgateSMTP, src string) *smtpRaw {
	t.Helper()
	c := smtpRawSession(t, p, src)
	c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00"+p.Secrets.aliceApp)))
	c.expect("235 ")
	return c
}

// envelope sends MAIL and RCPT, each of which must be accepted.
func (c *smtpRaw) envelope(from, to string) {
	c.t.Helper()
	c.send("MAIL FROM:<" + from + ">")
	c.expect("250 ")
	c.send("RCPT TO:<" + to + ">")
	c.expect("250 ")
}

// smtpRawAuth runs AUTH on a raw STARTTLS connection and returns the
// exact reply bytes and how long they took.
func smtpRawAuth(t *testing.T, p *passgateSMTP, src string, lines ...string) (string, time.Duration) {
	t.Helper()
	c := smtpRawSession(t, p, src)
	var reply string
	var took time.Duration
	for i, l := range lines {
		start := time.Now()
		c.send(l)
		reply = c.reply()
		took = time.Since(start)
		if i < len(lines)-1 && !strings.HasPrefix(reply, "334 ") {
			t.Fatalf("after %q: %q", l, reply)
		}
	}
	return reply, took
}

// TestSMTPNoSmuggling: a bare-LF end of data inside a message (SMTP
// smuggling, CVE-2023-51764) followed by commands, XCLIENT among them,
// stays message text: passgate relays command by command and re-encodes
// the body, so nothing of it reaches Postfix as a command.
func TestSMTPNoSmuggling(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	c := smtpAliceSession(t, p, "127.0.3.1")
	c.envelope("alice@example.test", "dave@example.test")
	c.send("DATA")
	c.expect("354 ")
	subject := fmt.Sprintf("smuggle %d", time.Now().UnixNano())
	fmt.Fprintf(c.w, "Subject: %s\r\n\r\nfirst\n.\nXCLIENT LOGIN=bob ADDR=10.9.9.9\r\nMAIL FROM:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n", subject)
	c.expect("250 ")
	c.send("QUIT")
	c.expect("221 ")
	body := waitMailbox(t, e, "dave", subject)
	if !bytes.Contains(body, []byte("XCLIENT LOGIN=bob")) || !bytes.Contains(body, []byte("smuggled")) {
		t.Fatalf("the smuggling attempt did not stay in the message:\n%s", body)
	}
	if strings.Contains(e.postfix.Log(), "10.9.9.9") {
		t.Fatal("a smuggled XCLIENT reached Postfix")
	}
}

// TestSMTPLargeMessageAsSent: a message of a few hundred KiB, sent in
// TLS records of 16 KiB, with lines that start with a stuffed dot, lines
// that start with a single dot (which the dot stuffing removes), a bare
// LF end of data and a command after it in the middle, reaches the
// mailbox with its text as a client means it: passgate hands most of
// its lines to Postfix as the client sent them and un-stuffs and stuffs
// again the rest, and the message ends at its own end of data only.
func TestSMTPLargeMessageAsSent(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	c := smtpAliceSession(t, p, "127.0.3.2")
	c.envelope("alice@example.test", "dave@example.test")
	c.send("DATA")
	c.expect("354 ")
	subject := fmt.Sprintf("large as sent %d", time.Now().UnixNano())
	var sent, want strings.Builder // as sent (stuffed), and as meant
	add := func(wire, text string) { sent.WriteString(wire); want.WriteString(text) }
	add("Subject: "+subject+"\r\n\r\n", "Subject: "+subject+"\n\n")
	for i := 0; sent.Len() < 300<<10; i++ {
		switch {
		case i%500 == 250:
			add(".single dot\r\n", "single dot\n")
		case i%100 == 7:
			add(fmt.Sprintf("..stuffed %d\r\n", i), fmt.Sprintf(".stuffed %d\n", i))
		case i == 2000:
			add("smuggle\n.\nRSET\r\n", "smuggle\n.\nRSET\n")
		default:
			l := fmt.Sprintf("line %d %s\r\n", i, strings.Repeat("x", i%70))
			add(l, strings.TrimSuffix(l, "\r\n")+"\n")
		}
	}
	add("..last\r\n", ".last\n")
	sent.WriteString(".\r\n")
	for rest := sent.String(); rest != ""; rest = rest[min(16<<10, len(rest)):] {
		if _, err := io.WriteString(c.w, rest[:min(16<<10, len(rest))]); err != nil {
			t.Fatal(err)
		}
	}
	c.expect("250 ")
	c.send("QUIT")
	c.expect("221 ")
	// Postfix adds header fields: the bodies are compared.
	_, got, _ := strings.Cut(strings.ReplaceAll(string(waitMailbox(t, e, "dave", subject)), "\r\n", "\n"), "\n\n")
	_, body, _ := strings.Cut(want.String(), "\n\n")
	if got != body {
		i := 0
		for i < min(len(got), len(body)) && got[i] == body[i] {
			i++
		}
		t.Fatalf("the mailbox's message (%d bytes) differs from what was sent (%d) at byte %d of its body: got %q, want %q",
			len(got), len(body), i, got[i:min(i+80, len(got))], body[i:min(i+80, len(body))])
	}
}

// TestSMTPUniformFailure: the primary password of an enforced user, a
// deleted app password and one without scope smtp get exactly the reply
// of a wrong password, after the failure delay.
func TestSMTPUniformFailure(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e), failureDelay: 400 * time.Millisecond})
	b := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	const want = "535 5.7.8 Authentication credentials invalid\r\n"
	tests := []struct {
		name  string
		lines []string
	}{
		{"wrong-password", []string{"AUTH PLAIN " + b("\x00alice\x00wrong-password")}},
		{"primary-of-enforced", []string{"AUTH PLAIN " + b("\x00alice\x00"+e.dovecot.Users["alice"])}},
		{"primary-of-enforced-login", []string{"AUTH LOGIN", b("alice"), b(e.dovecot.Users["alice"])}},
		{"deleted-app-password", []string{"AUTH PLAIN " + b("\x00carol\x00"+p.Secrets.carolGone)}},
		{"app-password-without-smtp", []string{"AUTH LOGIN " + b("bob"), b(p.Secrets.bobIMAP)}},
		{"unknown-user", []string{"AUTH PLAIN " + b("\x00mallory\x00"+p.Secrets.aliceApp)}},
		{"other-users-app-password", []string{"AUTH PLAIN " + b("\x00bob\x00"+p.Secrets.aliceApp)}},
		{"disabled-user-wrong-primary", []string{"AUTH PLAIN " + b("\x00dave\x00not-daves-password")}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, took := smtpRawAuth(t, p, fmt.Sprintf("127.0.1.%d", i+1), tc.lines...)
			if got != want {
				t.Fatalf("reply %q, want %q", got, want)
			}
			if took < 350*time.Millisecond {
				t.Errorf("reply after %v, before the failure delay", took)
			}
		})
	}
	// A correct primary password of a user without MFA passes through
	// and is verified by Postfix/Dovecot.
	got, _ := smtpRawAuth(t, p, "127.0.1.99", "AUTH PLAIN "+b("\x00dave\x00"+e.dovecot.Users["dave"]))
	if !strings.HasPrefix(got, "235 ") {
		t.Fatalf("dave's primary password: %q", got)
	}
}

// TestSMTPUnknownRecipient: Postfix's own 550 5.1.1 comes back.
func TestSMTPUnknownRecipient(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	c, err := smtp.DialStartTLS(p.Addr, e.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "alice", p.Secrets.aliceApp)); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("alice@example.test", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("nobody@example.test", nil)
	se, ok := err.(*smtp.SMTPError)
	if !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) || !strings.Contains(se.Message, "User unknown in virtual mailbox table") {
		t.Fatalf("RCPT to an unknown recipient: %#v", err)
	}
	// The transaction goes on with a good recipient.
	if err := c.Rcpt("bob@example.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Reset(); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
}

// TestSMTPSenderLoginMismatch: the login passgate forwards is the one
// Postfix applies: alice may not send as bob (smtpd_sender_login_maps),
// and Postfix's own 553 comes back, in XCLIENT and master modes alike.
func TestSMTPSenderLoginMismatch(t *testing.T) {
	e := smtpEnv(t)
	for _, mode := range []string{"xclient", "master"} {
		t.Run(mode, func(t *testing.T) {
			up := xclientUpstream(e)
			if mode == "master" {
				up = masterUpstream(e)
			}
			p := startPassgateSMTP(t, smtpOpts{upstream: up})
			c, err := smtp.DialStartTLS(p.Addr, e.certs.ClientTLS())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Auth(sasl.NewPlainClient("", "alice", p.Secrets.aliceApp)); err != nil {
				t.Fatal(err)
			}
			if err := c.Mail("bob@example.test", nil); err != nil {
				t.Fatal(err)
			}
			err = c.Rcpt("dave@example.test", nil)
			se, ok := err.(*smtp.SMTPError)
			if !ok || se.Code != 553 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(se.Message, "not owned by user alice") {
				t.Fatalf("alice sending as bob: %#v", err)
			}
		})
	}
}

// TestSMTPUpstreamDown: an unreachable upstream gives 454 4.7.0 (4xx),
// the same reply after the same delay whether the secret was a valid app
// password or not (else the 454 would confirm a guessed secret), and the
// attempt is audited as unavailable.
func TestSMTPUpstreamDown(t *testing.T) {
	e := smtpEnv(t)
	up := xclientUpstream(e)
	up.Addresses = []string{deadAddr(t), deadAddr(t)}
	p := startPassgateSMTP(t, smtpOpts{upstream: up, maxMessage: 1 << 20, failureDelay: 400 * time.Millisecond})
	const want = "454 4.7.0 Temporary authentication failure\r\n"
	tests := []struct{ name, user, secret string }{
		{"valid-app-password", "alice", p.Secrets.aliceApp},
		{"wrong-secret", "alice", "wrong-password"},
		{"primary-of-enforced", "alice", e.dovecot.Users["alice"]},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := base64.StdEncoding.EncodeToString([]byte("\x00" + tc.user + "\x00" + tc.secret))
			got, took := smtpRawAuth(t, p, fmt.Sprintf("127.0.2.%d", i+1), "AUTH PLAIN "+b)
			if got != want {
				t.Fatalf("reply %q, want %q", got, want)
			}
			if took < 350*time.Millisecond {
				t.Fatalf("454 after %v, before the failure delay", took)
			}
		})
	}
	deadline := time.Now().Add(patience)
	for !strings.Contains(p.Log.String(), "smtp.upstream.addresses") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	log := p.Log.String()
	for _, a := range up.Addresses {
		if !strings.Contains(log, a) {
			t.Errorf("log does not name %s:\n%s", a, log)
		}
	}
	evs, err := p.Store.Audit(context.Background(), store.AuditFilter{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	unavailable := 0
	for _, ev := range evs {
		if ev.Outcome == "unavailable" {
			unavailable++
		}
		if ev.Outcome == "success" {
			t.Errorf("audit records a success with the upstream down: %+v", ev)
		}
	}
	if unavailable != len(tests) {
		t.Errorf("%d attempts audited as unavailable, want %d: %+v", unavailable, len(tests), evs)
	}
}

// TestSMTPBDATAbortThenSend: a message sent in BDAT chunks and aborted
// with RSET never reaches the mailbox, and the session then sends the
// next message through Postfix (passgate logs in upstream again).
func TestSMTPBDATAbortThenSend(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	c := smtpAliceSession(t, p, "127.0.3.2")
	stamp := time.Now().UnixNano()
	aborted := fmt.Sprintf("Subject: aborted %d\r\n\r\n", stamp)
	c.envelope("alice@example.test", "dave@example.test")
	fmt.Fprintf(c.w, "BDAT %d\r\n%s", len(aborted), aborted)
	c.expect("250 ")
	c.send("RSET")
	c.expect("250 ")
	kept := fmt.Sprintf("kept %d", stamp)
	msg := testMessage("alice@example.test", "dave@example.test", kept, 100)
	c.envelope("alice@example.test", "dave@example.test")
	fmt.Fprintf(c.w, "BDAT %d LAST\r\n%s", len(msg), msg)
	c.expect("250 ")
	c.send("QUIT")
	c.expect("221 ")
	waitMailbox(t, e, "dave", kept)
	if body, err := findBySubject(e, "dave", fmt.Sprintf("aborted %d", stamp)); err == nil && body != nil {
		t.Fatalf("the aborted message was delivered:\n%s", body)
	}
}

// TestSMTPExternalClients: swaks and Python's smtplib, as separate
// processes, submit through passgate.
func TestSMTPExternalClients(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	host, port, _ := net.SplitHostPort(p.Addr)
	t.Run("swaks", func(t *testing.T) {
		subject := fmt.Sprintf("swaks %d", time.Now().UnixNano())
		cmd := exec.Command("swaks", "--server", host, "--port", port, "--tls",
			"--auth", "LOGIN", "--auth-user", "alice", "--auth-password", p.Secrets.aliceApp,
			"--from", "alice@example.test", "--to", "dave@example.test",
			"--header", "Subject: "+subject, "--body", "sent by swaks", "--hide-all")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("swaks: %v\n%s", err, out)
		}
		waitMailbox(t, e, "dave", subject)
	})
	t.Run("python-smtplib", func(t *testing.T) {
		subject := fmt.Sprintf("python %d", time.Now().UnixNano())
		script := `import smtplib, ssl, sys
host, port, ca, pw, subject = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP(host, port, timeout=30) as s:
    s.starttls(context=ctx)
    s.login("alice", pw)
    s.sendmail("alice@example.test", ["dave@example.test"],
        "From: alice@example.test\r\nTo: dave@example.test\r\nSubject: " + subject + "\r\n\r\nsent by smtplib\r\n")
`
		f := filepath.Join(t.TempDir(), "send.py")
		if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("python3", f, host, port, e.certs.CAFile, p.Secrets.aliceApp, subject).CombinedOutput()
		if err != nil {
			t.Fatalf("python3 smtplib: %v\n%s", err, out)
		}
		waitMailbox(t, e, "dave", subject)
	})
}

// TestSMTPPassthroughPrimary: in passthrough mode a user without MFA logs
// in with the primary password, verified by Postfix through Dovecot; an
// app password cannot log in that way and gets a temporary failure.
func TestSMTPPassthroughPrimary(t *testing.T) {
	e := smtpEnv(t)
	up := xclientUpstream(e)
	up.Login = smtpupstream.LoginPassthrough
	up.ForwardClient = smtpupstream.ForwardNone
	p := startPassgateSMTP(t, smtpOpts{upstream: up})
	c, err := smtp.DialStartTLS(p.Addr, e.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "dave", e.dovecot.Users["dave"])); err != nil {
		t.Fatalf("passthrough: %v", err)
	}
	subject := fmt.Sprintf("passthrough %d", time.Now().UnixNano())
	if err := c.SendMail("dave@example.test", []string{"dave@example.test"}, bytes.NewReader(testMessage("dave@example.test", "dave@example.test", subject, 100))); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	waitMailbox(t, e, "dave", subject)
}

// TestSMTPServeCLI runs "passgate serve" in-process with an SMTP listener
// and submits through it.
func TestSMTPServeCLI(t *testing.T) {
	e := smtpEnv(t)
	dir := t.TempDir()
	smtpPort, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`store:
  driver: sqlite
  dsn: %[1]s/passgate.db
key_file: %[1]s/passgate.key
tls:
  cert_file: %[2]s
  key_file: %[3]s
policy:
  failure_delay: 100ms
smtp:
  listen: %[4]s
  upstream:
    addresses: [%[5]s]
    tls: starttls
    ca_file: %[6]s
    login: xclient
    forward_client: xclient
`, dir, e.certs.CertFile, e.certs.KeyFile, smtpPort, e.postfix.SubmissionAddr, e.certs.CAFile)
	cfgFile := filepath.Join(dir, "passgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		var out, errb bytes.Buffer
		if code := cli.Run(context.Background(), append(args, "--config", cfgFile), &out, &errb); code != 0 {
			t.Fatalf("passgate %v: exit %d\n%s", args, code, errb.String())
		}
		return out.String()
	}
	run("migrate")
	run("user", "add", "alice", "--mfa", "enforced")
	// The password is printed on its own line, the last one.
	lines := strings.Split(strings.TrimSpace(run("app-password", "create", "alice", "--label", "Outlook", "--scopes", "smtp")), "\n")
	secret := strings.TrimSpace(lines[len(lines)-1])
	ctx, cancel := context.WithCancel(context.Background())
	var stderr lockedBuffer
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, []string{"serve", "--config", cfgFile}, io.Discard, &stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(patience):
			t.Error("serve did not stop")
		}
	})
	var c *smtp.Client
	deadline := time.Now().Add(patience)
	for {
		c, err = smtp.DialStartTLS(smtpPort, e.certs.ClientTLS())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("passgate serve did not listen on %s: %v\n%s", smtpPort, err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	if err := c.Auth(sasl.NewLoginClient("alice", secret)); err != nil {
		t.Fatalf("AUTH LOGIN: %v\n%s", err, stderr.String())
	}
	subject := fmt.Sprintf("serve %d", time.Now().UnixNano())
	if err := c.SendMail("alice@example.test", []string{"alice@example.test"}, bytes.NewReader(testMessage("alice@example.test", "alice@example.test", subject, 100))); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()
	waitMailbox(t, e, "alice", subject)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// TestSMTPQuotedLocalPartOnePath: a quoted local part reaches Postfix
// quoted again, as one address: what it holds never becomes parameters
// of passgate's MAIL or RCPT (an AUTH= the session drops, NOTIFY= and
// ORCPT= the front refuses). Postfix refuses the whole quoted address,
// and reads a quoted local part that needs no quotes as the plain
// address.
func TestSMTPQuotedLocalPartOnePath(t *testing.T) {
	e := smtpEnv(t)
	p := startPassgateSMTP(t, smtpOpts{upstream: xclientUpstream(e)})
	c := smtpAliceSession(t, p, "127.0.3.2")

	// The sender is one address, which alice does not own (Postfix
	// names it without its quotes).
	c.send(`MAIL FROM:<"x> AUTH=<ceo@example.test> ENVID=a"@example.test>`)
	c.expect("250 ")
	c.send("RCPT TO:<dave@example.test>")
	if got := c.reply(); !strings.HasPrefix(got, "553 5.7.1 <x> AUTH=<ceo@example.test> ENVID=a@example.test>: Sender address rejected: not owned by user alice") {
		t.Fatalf("RCPT after a quoted sender holding parameters: %q", got)
	}
	c.send("RSET")
	c.expect("250 ")

	// The recipient is one address, which does not exist.
	c.send("MAIL FROM:<alice@example.test>")
	c.expect("250 ")
	c.send(`RCPT TO:<"dave@example.test> NOTIFY=SUCCESS ORCPT=rfc822;x"@example.test>`)
	if got := c.reply(); !strings.HasPrefix(got, "550 5.1.1 ") {
		t.Fatalf("RCPT of a quoted recipient holding parameters: %q", got)
	}

	// A quoted local part that needs no quotes is the plain address.
	c.send(`RCPT TO:<"dave"@example.test>`)
	c.expect("250 ")
	c.send("DATA")
	c.expect("354 ")
	subject := fmt.Sprintf("quoted %d", time.Now().UnixNano())
	fmt.Fprintf(c.w, "Subject: %s\r\n\r\nquoted\r\n.\r\n", subject)
	c.expect("250 ")
	c.send("QUIT")
	c.expect("221 ")
	waitMailbox(t, e, "dave", subject)
}
