package smtpupstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"

	"github.com/passgate/passgate/integration/testenv"
)

// fakeMTA is an in-process go-smtp server standing in for a submission
// server with SASL PLAIN: master "master"/"mpw" may log in as anyone,
// "dave"/"davepw" as himself.
type fakeMTA struct {
	mu       sync.Mutex
	auths    []string // "authzid/authcid"
	remotes  []string
	messages []string
	logouts  int // sessions ended
}

func (f *fakeMTA) NewSession(c *smtp.Conn) (smtp.Session, error) {
	f.mu.Lock()
	f.remotes = append(f.remotes, c.Conn().RemoteAddr().String())
	f.mu.Unlock()
	return &fakeMTASession{f: f}, nil
}

type fakeMTASession struct{ f *fakeMTA }

func (s *fakeMTASession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *fakeMTASession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		ok := (user == "master" && pass == "mpw") || (user == "dave" && pass == "davepw" && (identity == "" || identity == "dave"))
		if !ok {
			return smtp.ErrAuthFailed
		}
		s.f.mu.Lock()
		s.f.auths = append(s.f.auths, identity+"/"+user)
		s.f.mu.Unlock()
		return nil
	}), nil
}
func (s *fakeMTASession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *fakeMTASession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *fakeMTASession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.mu.Lock()
	s.f.messages = append(s.f.messages, string(b))
	s.f.mu.Unlock()
	return nil
}
func (s *fakeMTASession) Reset() {}
func (s *fakeMTASession) Logout() error {
	s.f.mu.Lock()
	s.f.logouts++
	s.f.mu.Unlock()
	return nil
}

// startMTA serves fakeMTA on loopback, behind a PROXY-protocol listener
// when proxy is set, in TLS when tlsConf is set.
func startMTA(t *testing.T, proxy bool, tlsConf *tls.Config) (*fakeMTA, string) {
	t.Helper()
	f := &fakeMTA{}
	srv := smtp.NewServer(f)
	srv.AllowInsecureAuth = true
	srv.Domain = "mta.test"
	srv.MaxMessageBytes = 12345
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if proxy {
		ln = &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return f, addr
}

func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

var client = netip.MustParseAddrPort("192.0.2.7:4567")

func TestLoginModes(t *testing.T) {
	tests := []struct {
		name     string
		opts     func(addr string) Options
		req      Request
		wantAuth string
		wantErr  error // nil: success
	}{
		{"ok/master", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw"}
		}, Request{User: "alice"}, "alice/master", nil},
		{"ok/passthrough", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginPassthrough}
		}, Request{User: "dave", Password: "davepw"}, "/dave", nil},
		{"ok/primary-in-master-mode-uses-own-password", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw"}
		}, Request{User: "dave", Password: "davepw"}, "/dave", nil},
		{"ok/second-address", func(a string) Options {
			return Options{Addresses: []string{deadAddr(t), a}, TLS: TLSNone, Login: LoginPassthrough}
		}, Request{User: "dave", Password: "davepw"}, "/dave", nil},
		{"fail/wrong-master-password", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginMaster, MasterUser: "master", MasterPassword: "bad"}
		}, Request{User: "alice"}, "", ErrAuthRefused},
		{"fail/wrong-primary", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginPassthrough}
		}, Request{User: "dave", Password: "nope"}, "", ErrAuthRefused},
		{"fail/passthrough-without-password", func(a string) Options {
			return Options{Addresses: []string{a}, TLS: TLSNone, Login: LoginPassthrough}
		}, Request{User: "dave"}, "", ErrNoPassword},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mta, addr := startMTA(t, false, nil)
			c, err := New(tc.opts(addr))
			if err != nil {
				t.Fatal(err)
			}
			s, err := c.Login(context.Background(), tc.req)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Quit()
			if n, ok := s.MaxMessageSize(); !ok || n != 12345 {
				t.Errorf("SIZE %d %v", n, ok)
			}
			mta.mu.Lock()
			defer mta.mu.Unlock()
			if len(mta.auths) != 1 || mta.auths[0] != tc.wantAuth {
				t.Fatalf("upstream saw %v, want %s", mta.auths, tc.wantAuth)
			}
		})
	}
}

func TestAllAddressesDown(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	c, err := New(Options{Addresses: []string{a, b}, TLS: TLSNone, Login: LoginPassthrough})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Login(context.Background(), Request{User: "dave", Password: "x"})
	if err == nil || errors.Is(err, ErrAuthRefused) {
		t.Fatalf("err = %v", err)
	}
	for _, want := range []string{a, b, "smtp.upstream.addresses"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestProxyHeaderAndImplicitTLS(t *testing.T) {
	certs, err := testenv.NewCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stls, err := certs.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	mta, addr := startMTA(t, true, stls)
	c, err := New(Options{Addresses: []string{addr}, TLS: TLSImplicit, TLSConfig: certs.ClientTLS(),
		Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw", ForwardClient: ForwardProxy})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Login(context.Background(), Request{User: "alice", Client: client})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Data(strings.NewReader("x")); err == nil {
		t.Fatal("DATA without MAIL accepted")
	}
	s.Close()
	mta.mu.Lock()
	if len(mta.remotes) == 0 || mta.remotes[0] != client.String() {
		t.Errorf("upstream saw client %v, want %s", mta.remotes, client)
	}
	mta.mu.Unlock()

	// A certificate the CA does not vouch for is a temporary failure.
	other, err := testenv.NewCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, _ = New(Options{Addresses: []string{addr}, TLS: TLSImplicit, TLSConfig: other.ClientTLS(),
		Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw", ForwardClient: ForwardProxy})
	_, err = c.Login(context.Background(), Request{User: "alice", Client: client})
	if err == nil || errors.Is(err, ErrAuthRefused) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unverified certificate: %v", err)
	}
}

func TestDataStreamsAndAborts(t *testing.T) {
	mta, addr := startMTA(t, false, nil)
	c, _ := New(Options{Addresses: []string{addr}, TLS: TLSNone, Login: LoginPassthrough})
	s, err := c.Login(context.Background(), Request{User: "dave", Password: "davepw"})
	if err != nil {
		t.Fatal(err)
	}
	msg := "Subject: x\r\n\r\n.dot\r\nbody\r\n"
	if err := s.Mail("dave@example.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Rcpt("dave@example.test", nil); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Data(strings.NewReader(msg)); err != nil || n != int64(len(msg)) {
		t.Fatalf("Data = %d, %v", n, err)
	}
	// A reader that fails mid-message: nothing is committed.
	_ = s.Mail("dave@example.test", nil)
	_ = s.Rcpt("dave@example.test", nil)
	boom := errors.New("client went away")
	if _, err := s.Data(io.MultiReader(strings.NewReader("partial\r\n"), errReader{boom})); !errors.Is(err, boom) {
		t.Fatalf("Data with a failing reader: %v", err)
	}
	// The MTA ends the session after its Data has returned: then it has
	// committed whatever it was going to.
	for deadline := time.Now().Add(patience); ; time.Sleep(5 * time.Millisecond) {
		mta.mu.Lock()
		ended := mta.logouts > 0
		mta.mu.Unlock()
		if ended {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the MTA's session did not end after the failed DATA")
		}
	}
	mta.mu.Lock()
	defer mta.mu.Unlock()
	if len(mta.messages) != 1 || mta.messages[0] != msg {
		t.Fatalf("upstream messages %q", mta.messages)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// scriptedXClient is a Postfix-like peer for the XCLIENT exchange: it
// offers ehloExt, answers XCLIENT with xReply, and records the XCLIENT
// line and the EHLO name that follows.
func scriptedXClient(t *testing.T, ehloExt, xReply string) (addr string, got chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan string, 4)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(patience))
		r := bufio.NewReader(c)
		io.WriteString(c, "220 mx.test ESMTP\r\n")
		r.ReadString('\n') // EHLO passgate
		io.WriteString(c, "250-mx.test\r\n"+ehloExt+"250 SIZE 1000\r\n")
		line, _ := r.ReadString('\n')
		got <- strings.TrimRight(line, "\r\n")
		io.WriteString(c, xReply)
		line, _ = r.ReadString('\n')
		got <- strings.TrimRight(line, "\r\n")
		io.WriteString(c, "250-mx.test\r\n250 SIZE 1000\r\n")
		r.ReadString('\n') // QUIT
		io.WriteString(c, "221 bye\r\n")
	}()
	return ln.Addr().String(), got
}

func TestXClient(t *testing.T) {
	const offer = "250-XCLIENT NAME ADDR PROTO HELO PORT LOGIN\r\n"
	tests := []struct {
		name, ext, reply string
		req              Request
		wantLine         string
		wantErr          string
	}{
		{"ok/login-addr-port", offer, "220 mx.test ESMTP\r\n", Request{User: "alice", Client: client, Helo: "client.test"},
			"XCLIENT LOGIN=alice ADDR=192.0.2.7 PORT=4567", ""},
		{"ok/xtext", offer, "220 mx.test ESMTP\r\n", Request{User: "a b+c=d", Client: client},
			"XCLIENT LOGIN=a+20b+2Bc+3Dd ADDR=192.0.2.7 PORT=4567", ""},
		{"ok/ipv6", offer, "220 mx.test ESMTP\r\n", Request{User: "alice", Client: netip.MustParseAddrPort("[2001:db8::1]:25")},
			"XCLIENT LOGIN=alice ADDR=IPV6:2001:db8::1 PORT=25", ""},
		{"fail/not-offered", "", "", Request{User: "alice", Client: client}, "", "smtpd_authorized_xclient_hosts"},
		{"fail/attribute-missing", "250-XCLIENT NAME ADDR\r\n", "", Request{User: "alice", Client: client}, "", "lacks LOGIN, PORT"},
		{"fail/refused", offer, "550 5.7.0 Error: insufficient authorization\r\n", Request{User: "alice", Client: client},
			"XCLIENT LOGIN=alice ADDR=192.0.2.7 PORT=4567", "XCLIENT refused: 550"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := scriptedXClient(t, tc.ext, tc.reply)
			c, err := New(Options{Addresses: []string{addr}, TLS: TLSNone, Login: LoginXClient, ForwardClient: ForwardXClient, LoginTimeout: patience})
			if err != nil {
				t.Fatal(err)
			}
			s, err := c.Login(context.Background(), tc.req)
			if tc.wantErr != "" {
				if err == nil || errors.Is(err, ErrAuthRefused) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if tc.wantLine != "" {
				if line := <-got; line != tc.wantLine {
					t.Fatalf("sent %q, want %q", line, tc.wantLine)
				}
			}
			if s != nil {
				helo := <-got
				want := "EHLO " + tc.req.Helo
				if tc.req.Helo == "" {
					want = "EHLO " + DefaultLocalName
				}
				if helo != want {
					t.Errorf("after XCLIENT sent %q, want %q", helo, want)
				}
				if n, ok := s.MaxMessageSize(); !ok || n != 1000 {
					t.Errorf("SIZE after XCLIENT = %d %v", n, ok)
				}
				_ = s.Quit()
			}
		})
	}
}

// TestDialThenLogin: Dial answers before anything about the login is
// known, and the same connection is then logged in (one connection
// upstream, not two); a dead upstream fails at Dial.
func TestDialThenLogin(t *testing.T) {
	mta, addr := startMTA(t, false, nil)
	c, err := New(Options{Addresses: []string{deadAddr(t), addr}, TLS: TLSNone, Login: LoginMaster, MasterUser: "master", MasterPassword: "mpw"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Dial(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.Login(context.Background(), "alice", "", "client.test")
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := s.MaxMessageSize(); !ok || n != 12345 {
		t.Errorf("SIZE %d %v", n, ok)
	}
	_ = s.Quit()
	mta.mu.Lock()
	if len(mta.remotes) != 1 || len(mta.auths) != 1 || mta.auths[0] != "alice/master" {
		t.Errorf("upstream saw connections %v, logins %v; want one connection logged in as alice/master", mta.remotes, mta.auths)
	}
	mta.mu.Unlock()

	dead, err := New(Options{Addresses: []string{deadAddr(t)}, TLS: TLSNone, Login: LoginXClient})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dead.Dial(context.Background(), client); err == nil || !strings.Contains(err.Error(), "smtp.upstream.addresses") {
		t.Fatalf("Dial to a dead upstream: %v", err)
	}
}

// TestPasswordRedacted: no fmt verb and no slog handler prints a
// password held in Options or Request.
func TestPasswordRedacted(t *testing.T) {
	const secret = "s3cret-Value"
	o := Options{MasterUser: "master", MasterPassword: secret}
	r := Request{User: "dave", Password: secret}
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, nil))
	log.Info("x", slog.Any("opts", o), slog.Any("req", r), slog.Any("pw", r.Password))
	log = slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("x", slog.Any("opts", o), slog.Any("req", r), slog.Any("pw", r.Password))
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		buf.WriteString(fmt.Sprintf(verb, o))
		buf.WriteString(fmt.Sprintf(verb, r))
		buf.WriteString(fmt.Sprintf(verb, &r))
	}
	if strings.Contains(buf.String(), secret) {
		t.Fatalf("a password was printed:\n%s", buf.String())
	}
}
