package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/passgate/passgate/backends/imapupstream"
	"github.com/passgate/passgate/integration/testenv"
)

// clientIPs hands out distinct client addresses (192.0.2.x, TEST-NET-1)
// so that Dovecot's failure penalty, keyed on the forwarded address, never
// slows another test.
var clientIPs atomic.Uint32

func nextClient(t *testing.T) netip.AddrPort {
	t.Helper()
	n := clientIPs.Add(1)
	if n > 250 {
		t.Fatal("out of test client addresses")
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}), uint16(40000+n))
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// preauthConn makes a connection that is already logged in look like a
// fresh PREAUTH session to imapclient, which insists on reading a
// greeting first.
type preauthConn struct {
	net.Conn
	r io.Reader
}

func (c *preauthConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// clientOver runs imapclient on a connection returned by imapupstream.
func clientOver(t *testing.T, conn net.Conn) *imapclient.Client {
	t.Helper()
	greeting := strings.NewReader("* PREAUTH [CAPABILITY IMAP4rev1] passgate test\r\n")
	c := imapclient.New(&preauthConn{Conn: conn, r: io.MultiReader(greeting, conn)}, nil)
	if err := c.WaitGreeting(); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fetchBody fetches the whole message with the given UID (BODY.PEEK[]).
func fetchBody(t *testing.T, c *imapclient.Client, uid imap.UID) []byte {
	t.Helper()
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("FETCH UID %d: %v", uid, err)
	}
	if len(msgs) != 1 {
		t.Fatalf("FETCH UID %d: %d messages", uid, len(msgs))
	}
	return msgs[0].FindBodySection(section)
}

// upstreamOptions is a master-user, authzid, plaintext configuration for
// the shared Dovecot; cases change what they test.
func upstreamOptions() imapupstream.Options {
	return imapupstream.Options{
		Addresses:      []string{env.dovecot.IMAPAddr},
		TLS:            imapupstream.TLSNone,
		Login:          imapupstream.LoginMaster,
		MasterUser:     env.dovecot.MasterUser,
		MasterPassword: env.dovecot.MasterPassword,
		MasterStyle:    imapupstream.MasterAuthzid,
		ForwardClient:  imapupstream.ForwardID,
		DialTimeout:    2 * time.Second,
	}
}

func TestDovecotDirect(t *testing.T) {
	d := env.dovecot
	c, err := imapclient.DialStartTLS(d.IMAPAddr, &imapclient.Options{TLSConfig: env.certs.ClientTLS()})
	if err != nil {
		t.Fatalf("STARTTLS to Dovecot: %v", err)
	}
	defer c.Close()
	if err := c.Login("alice", d.Users["alice"]).Wait(); err != nil {
		t.Fatalf("LOGIN alice: %v", err)
	}
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if int(sel.NumMessages) != len(d.Messages) {
		t.Fatalf("INBOX holds %d messages, seeded %d", sel.NumMessages, len(d.Messages))
	}
	for i, want := range d.Messages {
		if got := fetchBody(t, c, imap.UID(i+1)); !bytes.Equal(got, want) {
			t.Errorf("UID %d: %d bytes differ from the %d seeded", i+1, len(got), len(want))
		}
	}
	if len(d.Messages[len(d.Messages)-1]) < 1<<20 {
		t.Errorf("no seeded message over 1 MB")
	}
}

func TestUpstreamLoginDovecot(t *testing.T) {
	d := env.dovecot
	tlsCfg := env.certs.ClientTLS()
	tests := []struct {
		name     string
		change   func(*imapupstream.Options)
		password string // Request.Password
		logIP    bool   // Dovecot's log must show the forwarded client address
	}{
		{name: "ok/master-authzid-id", logIP: true},
		{name: "ok/master-separator", change: func(o *imapupstream.Options) { o.MasterStyle = imapupstream.MasterSeparator }, logIP: true},
		{name: "ok/passthrough", change: func(o *imapupstream.Options) { o.Login = imapupstream.LoginPassthrough }, password: d.Users["alice"], logIP: true},
		{name: "ok/master-config-with-client-password", password: d.Users["alice"], logIP: true},
		{name: "ok/starttls", change: func(o *imapupstream.Options) { o.TLS = imapupstream.TLSStartTLS; o.TLSConfig = tlsCfg }, logIP: true},
		{name: "ok/implicit-tls", change: func(o *imapupstream.Options) {
			o.TLS = imapupstream.TLSImplicit
			o.TLSConfig = tlsCfg
			o.Addresses = []string{d.IMAPSAddr}
		}, logIP: true},
		{name: "ok/proxy-v2", change: func(o *imapupstream.Options) {
			o.ForwardClient = imapupstream.ForwardProxy
			o.Addresses = []string{d.IMAPProxyAddr}
		}, logIP: true},
		{name: "ok/proxy-v2-starttls", change: func(o *imapupstream.Options) {
			o.ForwardClient = imapupstream.ForwardProxy
			o.TLS = imapupstream.TLSStartTLS
			o.TLSConfig = tlsCfg
			o.Addresses = []string{d.IMAPProxyAddr}
		}, logIP: true},
		{name: "ok/forward-none", change: func(o *imapupstream.Options) { o.ForwardClient = imapupstream.ForwardNone }},
		{name: "ok/dead-first-address", change: func(o *imapupstream.Options) {
			o.Addresses = []string{deadAddr(t), d.IMAPAddr}
		}, logIP: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := upstreamOptions()
			if tc.change != nil {
				tc.change(&opts)
			}
			u, err := imapupstream.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			client := nextClient(t)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, okText, err := u.Login(ctx, imapupstream.Request{User: "alice", Password: tc.password, Client: client})
			if err != nil {
				t.Fatalf("Login: %v", err)
			}
			defer conn.Close()
			if !strings.HasPrefix(okText, "OK [CAPABILITY ") {
				t.Errorf("okText = %q, want OK [CAPABILITY …]", okText)
			}
			c := clientOver(t, conn)
			if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
				t.Fatalf("SELECT over the upstream connection: %v", err)
			}
			if got := fetchBody(t, c, 1); !bytes.Equal(got, d.Messages[0]) {
				t.Errorf("FETCH UID 1 over the upstream connection differs")
			}
			if err := c.Logout().Wait(); err != nil {
				t.Errorf("LOGOUT: %v", err)
			}
			rip := "rip=" + client.Addr().String() + ","
			if tc.logIP {
				waitLog(t, d, rip)
			} else if d.LogContains(rip) {
				t.Errorf("Dovecot's log shows %s although nothing was forwarded", rip)
			}
		})
	}
}

// waitLog waits up to 2 s for Dovecot's log to contain substr.
func waitLog(t *testing.T, d *testenv.Dovecot, substr string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if d.LogContains(substr) {
			return
		}
	}
	t.Errorf("Dovecot's log does not show %q; log tail:\n%s", substr, tail(d.Log(), 15))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestUpstreamRefusedDovecot(t *testing.T) {
	tests := []struct {
		name     string
		change   func(*imapupstream.Options)
		user     string
		password string
	}{
		{name: "fail/passthrough-wrong-password", change: func(o *imapupstream.Options) { o.Login = imapupstream.LoginPassthrough }, user: "alice", password: "wrong-pw"},
		{name: "fail/passthrough-password-with-specials", change: func(o *imapupstream.Options) { o.Login = imapupstream.LoginPassthrough }, user: "bob", password: "wr\"ong\\pw {3}"},
		{name: "fail/master-wrong-master-password", change: func(o *imapupstream.Options) { o.MasterPassword = "not-the-master-pw" }, user: "alice"},
		{name: "fail/master-unknown-user", user: "nobody-here"},
		{name: "fail/separator-unknown-user", change: func(o *imapupstream.Options) { o.MasterStyle = imapupstream.MasterSeparator }, user: "nobody-here"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case has its own client address, so its own Dovecot penalty
			opts := upstreamOptions()
			if tc.change != nil {
				tc.change(&opts)
			}
			u, err := imapupstream.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, _, err := u.Login(ctx, imapupstream.Request{User: tc.user, Password: tc.password, Client: nextClient(t)})
			if err == nil {
				conn.Close()
				t.Fatal("Login succeeded, want ErrRefused")
			}
			if !errors.Is(err, imapupstream.ErrRefused) {
				t.Fatalf("Login: %v, want ErrRefused", err)
			}
			var ue *imapupstream.UnavailableError
			if errors.As(err, &ue) {
				t.Errorf("a refusal is also an UnavailableError: %v", err)
			}
			for _, secret := range []string{tc.password, opts.MasterPassword} {
				if secret != "" && strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows a secret: %v", err)
				}
			}
		})
	}
}

func TestUpstreamUnavailableDovecot(t *testing.T) {
	d := env.dovecot
	wrongCA := x509.NewCertPool() // trusts nothing
	dead1, dead2 := deadAddr(t), deadAddr(t)
	tests := []struct {
		name   string
		change func(*imapupstream.Options)
		want   []string // in the error text
	}{
		{name: "fail/all-dead", change: func(o *imapupstream.Options) { o.Addresses = []string{dead1, dead2} },
			want: []string{dead1, dead2, "connection refused", "imap.upstream.addresses"}},
		{name: "fail/starttls-wrong-ca", change: func(o *imapupstream.Options) {
			o.TLS = imapupstream.TLSStartTLS
			o.TLSConfig = &tls.Config{RootCAs: wrongCA, ServerName: "127.0.0.1"}
		}, want: []string{d.IMAPAddr, "certificate", "ca_file"}},
		{name: "fail/implicit-wrong-ca", change: func(o *imapupstream.Options) {
			o.TLS = imapupstream.TLSImplicit
			o.Addresses = []string{d.IMAPSAddr}
			o.TLSConfig = &tls.Config{RootCAs: wrongCA, ServerName: "127.0.0.1"}
		}, want: []string{d.IMAPSAddr, "certificate"}},
		{name: "fail/implicit-wrong-name", change: func(o *imapupstream.Options) {
			o.TLS = imapupstream.TLSImplicit
			o.Addresses = []string{d.IMAPSAddr}
			o.TLSConfig = &tls.Config{RootCAs: env.certs.Pool, ServerName: "imap.example.test"}
		}, want: []string{d.IMAPSAddr, "certificate"}},
		{name: "fail/implicit-tls-to-plain-port", change: func(o *imapupstream.Options) {
			o.TLS = imapupstream.TLSImplicit
			o.TLSConfig = env.certs.ClientTLS()
		}, want: []string{d.IMAPAddr, "TLS handshake"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := upstreamOptions()
			tc.change(&opts)
			u, err := imapupstream.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, _, err := u.Login(ctx, imapupstream.Request{User: "alice", Client: nextClient(t)})
			if err == nil {
				conn.Close()
				t.Fatal("Login succeeded, want an UnavailableError")
			}
			var ue *imapupstream.UnavailableError
			if !errors.As(err, &ue) {
				t.Fatalf("Login: %T %v, want *UnavailableError", err, err)
			}
			if errors.Is(err, imapupstream.ErrRefused) {
				t.Errorf("unavailable error matches ErrRefused: %v", err)
			}
			if len(ue.Attempts) != len(opts.Addresses) {
				t.Errorf("%d attempts, want %d: %v", len(ue.Attempts), len(opts.Addresses), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestUpstreamLiteralDovecot logs in in passthrough as erin, whose
// password holds a quote, a backslash, braces and non-ASCII bytes: it must
// travel as a literal, byte for byte.
func TestUpstreamLiteralDovecot(t *testing.T) {
	d := env.dovecot
	for _, forward := range []string{imapupstream.ForwardID, imapupstream.ForwardNone} {
		t.Run("ok/"+forward, func(t *testing.T) {
			opts := upstreamOptions()
			opts.Login = imapupstream.LoginPassthrough
			opts.ForwardClient = forward
			u, err := imapupstream.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, _, err := u.Login(ctx, imapupstream.Request{User: "erin", Password: d.Users["erin"], Client: nextClient(t)})
			if err != nil {
				t.Fatalf("Login as erin with a password needing a literal: %v", err)
			}
			conn.Close()
		})
	}
}

// readTagged reads lines from r until the tagged response to tag.
func readTagged(r *bufio.Reader, tag string) (string, error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(line, tag+" ") {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
}
