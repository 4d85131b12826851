package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/passgate/passgate/backends/smtpupstream"
	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/revoke"
	"github.com/passgate/passgate/proxy/smtpfront"
)

// smtpServers is what the SMTP tests run against: the shared Dovecot of
// TestMain and a Postfix of their own, started once per test binary.
type smtpServers struct {
	postfix *testenv.Postfix
	dovecot *testenv.Dovecot
	certs   *testenv.Certs
}

// smtpState is test-only state: the Postfix shared by the SMTP tests.
var smtpState struct {
	once sync.Once
	env  *smtpServers
	err  error
	stop func()
}

// startSMTPEnv starts Postfix (in front of the Dovecot that startServers
// started) once per test binary. TestMain may call it after startServers
// and call stop on exit; smtpEnv calls it lazily otherwise.
func startSMTPEnv() (stop func(), err error) {
	smtpState.once.Do(func() {
		smtpState.stop = func() {}
		if env.dovecot == nil || env.certs == nil {
			smtpState.err = errors.New("integration: startSMTPEnv needs the Dovecot and certificates of startServers")
			return
		}
		dir := filepath.Join(env.dir, "postfix")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			smtpState.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pf, err := testenv.StartPostfix(ctx, dir, env.certs, env.dovecot)
		if err != nil {
			smtpState.err = err
			return
		}
		smtpState.env = &smtpServers{postfix: pf, dovecot: env.dovecot, certs: env.certs}
		smtpState.stop = pf.Stop
	})
	return smtpState.stop, smtpState.err
}

// smtpEnv returns the SMTP servers, starting them on first use; a server
// that cannot start fails the test.
func smtpEnv(t testing.TB) *smtpServers {
	t.Helper()
	if _, err := startSMTPEnv(); err != nil {
		t.Fatalf("start Postfix: %v", err)
	}
	return smtpState.env
}

// smtpSecrets are the app passwords a passgate instance's store holds.
type smtpSecrets struct {
	aliceApp   string // alice (enforced), scopes smtp
	bobIMAP    string // bob (enforced), scope imap only
	carolGone  string // carol (enforced), deleted
	daveStatus store.MFAState
}

// passgateSMTP is one passgate SMTP front (STARTTLS and implicit TLS) on
// its own SQLite store, in this process, wired as serve wires it.
type passgateSMTP struct {
	Addr, TLSAddr string
	Store         *store.Journal // the decision's store, as serve wires it
	Secrets       smtpSecrets
	Log           *lockedBuffer
	servers       []*smtpfront.Server
}

type smtpOpts struct {
	upstream     smtpupstream.Options
	failureDelay time.Duration
	maxMessage   int64
}

// startPassgateSMTP starts passgate's SMTP listeners in front of up.
func startPassgateSMTP(t testing.TB, o smtpOpts) *passgateSMTP {
	t.Helper()
	e := smtpEnv(t)
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, store.Options{Driver: "sqlite", DSN: filepath.Join(dir, "passgate.db"), KeyFile: filepath.Join(dir, "passgate.key")})
	if err != nil {
		t.Fatal(err)
	}
	j := store.NewJournal(st, nil)
	t.Cleanup(func() { j.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	p := &passgateSMTP{Store: j, Log: &lockedBuffer{}}
	for _, u := range []string{"alice", "bob", "carol"} {
		if _, err := st.AddUser(ctx, u, store.MFAEnforced); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(user, label string, scopes []string) string {
		_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: user, Label: label, Scopes: scopes})
		if err != nil {
			t.Fatal(err)
		}
		return secret
	}
	p.Secrets.aliceApp = mk("alice", "Outlook 2010", []string{store.ScopeSMTP, store.ScopeIMAP})
	p.Secrets.bobIMAP = mk("bob", "tablet", []string{store.ScopeIMAP})
	p.Secrets.carolGone = mk("carol", "old phone", nil)
	if _, err := st.DeleteAppPassword(ctx, "carol", "old phone"); err != nil {
		t.Fatal(err)
	}
	delay := o.failureDelay
	if delay == 0 {
		delay = 300 * time.Millisecond
	}
	log := slog.New(slog.NewJSONHandler(p.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	engine := policy.New(policy.Options{Store: j, FailureDelay: delay, Logger: log})
	uo := o.upstream
	if uo.TLSConfig == nil {
		uo.TLSConfig = e.certs.ClientTLS()
	}
	uc, err := smtpupstream.New(uo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() }) // its ready connections (Options.Ready)
	stls, err := e.certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	size := o.maxMessage
	if size == 0 {
		n, known, err := uc.ProbeSize(ctx)
		if err == nil && known {
			size = n
		}
	}
	base := smtpfront.Options{
		Decider:         engine,
		Upstream:        cli.SMTPUpstream(uc),
		TLSConfig:       stls,
		Hostname:        "passgate.test",
		MaxMessageBytes: size,
		Logger:          log,
		Sessions:        revoke.NewRegistry(),
	}
	for _, implicit := range []bool{false, true} {
		so := base
		so.ImplicitTLS = implicit
		srv := smtpfront.New(so)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if implicit {
			p.TLSAddr = ln.Addr().String()
		} else {
			p.Addr = ln.Addr().String()
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		p.servers = append(p.servers, srv)
		t.Cleanup(func() {
			srv.Close()
			<-done
		})
	}
	return p
}

// xclientUpstream is the XCLIENT configuration for the shared Postfix's
// STARTTLS submission port.
func xclientUpstream(e *smtpServers) smtpupstream.Options {
	return smtpupstream.Options{
		Addresses:     []string{e.postfix.SubmissionAddr},
		TLS:           smtpupstream.TLSStartTLS,
		Login:         smtpupstream.LoginXClient,
		ForwardClient: smtpupstream.ForwardXClient,
	}
}

// masterUpstream is the master-user configuration for Postfix's
// implicit-TLS port (SASL through Dovecot's master passdb).
func masterUpstream(e *smtpServers) smtpupstream.Options {
	return smtpupstream.Options{
		Addresses:      []string{e.postfix.SubmissionsTLS},
		TLS:            smtpupstream.TLSImplicit,
		Login:          smtpupstream.LoginMaster,
		MasterUser:     e.dovecot.MasterUser,
		MasterPassword: smtpupstream.Password(e.dovecot.MasterPassword),
		ForwardClient:  smtpupstream.ForwardNone,
	}
}

// smtpDial connects to addr from the loopback address src (so that the
// upstream's log can show it), in TLS when implicit.
func smtpDial(t testing.TB, addr, src string, tlsConf *tls.Config, implicit bool) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: patience}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if implicit {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		return tc
	}
	return c
}

// testMessage is a small message with a unique subject.
func testMessage(from, to, subject string, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%d@passgate.test>\r\n\r\n", from, to, subject, time.Now().UnixNano())
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for n := 0; n < bodySize; n += len(line) {
		b.WriteString(line)
	}
	b.WriteString(".leading dot line\r\n")
	return b.Bytes()
}

// waitMailbox waits until user's INBOX at Dovecot holds a message whose
// subject is subject, reading it back over IMAP, and returns its body.
func waitMailbox(t testing.TB, e *smtpServers, user, subject string) []byte {
	t.Helper()
	deadline := time.Now().Add(patience)
	for {
		body, err := findBySubject(e, user, subject)
		if err == nil && body != nil {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %q did not reach %s's INBOX (last error %v)\npostfix log:\n%s", subject, user, err, tail(e.postfix.Log(), 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func findBySubject(e *smtpServers, user, subject string) ([]byte, error) {
	c, err := imapclient.DialStartTLS(e.dovecot.IMAPAddr, &imapclient.Options{TLSConfig: e.certs.ClientTLS()})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Login(user, e.dovecot.Users[user]).Wait(); err != nil {
		return nil, err
	}
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return nil, err
	}
	data, err := c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: subject}}}, nil).Wait()
	if err != nil {
		return nil, err
	}
	uids := data.AllUIDs()
	if len(uids) == 0 {
		return nil, nil
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(uids[0]), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("fetch: %v (%d messages)", err, len(msgs))
	}
	return msgs[0].FindBodySection(section), nil
}

// genReader yields n bytes of message body in 78-byte CRLF lines without
// holding them in memory.
type genReader struct {
	n, off int64
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.off >= g.n {
		return 0, io.EOF
	}
	const line = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n"
	if rem := g.n - g.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	i := 0
	for i < len(p) {
		k := copy(p[i:], line[g.off%int64(len(line)):])
		i += k
		g.off += int64(k)
	}
	return i, nil
}

// tlsClient runs the client side of STARTTLS on conn.
func tlsClient(conn net.Conn, e *smtpServers) *tls.Conn {
	tc := tls.Client(conn, e.certs.ClientTLS())
	_ = tc.Handshake()
	return tc
}
