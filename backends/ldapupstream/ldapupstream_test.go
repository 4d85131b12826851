package ldapupstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/ldapwire"
)

func TestNew(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	cases := []struct {
		name    string
		opts    Options
		addr    string
		errHas  string
		withTLS bool
	}{
		{"ok/ldap-default-port", Options{URL: "ldap://dir.example.test"}, "dir.example.test:389", "", false},
		{"ok/ldaps-default-port", Options{URL: "ldaps://dir.example.test"}, "dir.example.test:636", "", true},
		{"ok/starttls", Options{URL: "ldap://127.0.0.1:1389", TLS: "starttls"}, "127.0.0.1:1389", "", true},
		{"fail/scheme", Options{URL: "http://x"}, "", "ldap.upstream.url", false},
		{"fail/tls-mode", Options{URL: "ldap://x", TLS: "implicit"}, "", "ldap.upstream.tls", false},
		{"fail/starttls-on-ldaps", Options{URL: "ldaps://x", TLS: "starttls"}, "", "ldap.upstream.tls", false},
		{"fail/ca-missing", Options{URL: "ldaps://x", CAFile: filepath.Join(dir, "none.pem")}, "", "ldap.upstream.ca_file", false},
		{"fail/ca-not-pem", Options{URL: "ldaps://x", CAFile: notPEM}, "", "no PEM certificate", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.opts)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("err = %v, want one naming %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Addr() != tc.addr || (c.tlsConf != nil) != tc.withTLS {
				t.Fatalf("addr %s tls %v, want %s %v", c.Addr(), c.tlsConf != nil, tc.addr, tc.withTLS)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	for code, want := range map[uint16]bool{
		0: false, 1: false, 2: false, 32: true, 34: true, 48: true, 49: true, 50: true, 51: false, 52: false, 53: true, 80: false, 200: false,
	} {
		if refused(code) != want {
			t.Errorf("refused(%d) = %v, want %v", code, !want, want)
		}
	}
}

func TestWithControl(t *testing.T) {
	proxy := ldap.NewControlString(OIDProxiedAuthz, true, "dn:uid=alice,dc=x").Encode().Bytes()
	paging := ldap.NewControlPaging(10).Encode().Bytes()
	wrap := func(ctls ...[]byte) []byte {
		c := bytes.Join(ctls, nil)
		return append(appendLength([]byte{0xa0}, len(c)), c...)
	}
	got, err := withControl(nil, proxy, OIDProxiedAuthz)
	if err != nil || !bytes.Equal(got, wrap(proxy)) {
		t.Fatalf("no controls: %x %v", got, err)
	}
	got, err = withControl(wrap(paging), proxy, OIDProxiedAuthz)
	if err != nil || !bytes.Equal(got, wrap(paging, proxy)) {
		t.Fatalf("with paging: %x %v", got, err)
	}
	own := ldap.NewControlString(oidProxiedAuthzV1, true, "dn:cn=admin").Encode().Bytes()
	if _, err := withControl(wrap(paging, own), proxy, OIDProxiedAuthz, oidProxiedAuthzV1); !errors.Is(err, errOwnProxyAuthz) {
		t.Fatalf("client's own proxied authorization: %v", err)
	}
	if _, err := withControl([]byte{0xa0, 0x03, 0x30}, proxy); err == nil {
		t.Fatal("malformed controls accepted")
	}
}

// fakeDirectory answers binds with resultCode code, then stalls on every
// other request, and closes the connection when close is signalled.
func fakeDirectory(t *testing.T, code int64, closeCh <-chan struct{}) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		go func() { <-closeCh; nc.Close() }()
		br := bufio.NewReader(nc)
		for {
			raw, err := ldapwire.ReadMessage(br, 1<<20)
			if err != nil {
				return
			}
			m, err := ldapwire.ParseMessage(raw)
			if err != nil || m.Op.Tag != opBindRequest {
				continue
			}
			p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opBindResponse, nil, "")
			p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, code, ""))
			p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
			p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
			nc.Write(envelope(m.ID, p.Bytes(), nil))
		}
	}()
	return "ldap://" + ln.Addr().String()
}

func TestSessionBindResults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int64
		ok     bool
		hasErr bool
	}{
		{"ok", 0, true, false},
		{"refused/49", 49, false, false},
		{"refused/53", 53, false, false},
		{"error/52", 52, false, true},
		{"error/80", 80, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			closeCh := make(chan struct{})
			defer close(closeCh)
			c, err := New(Options{URL: fakeDirectory(t, tc.code, closeCh)})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			s, err := c.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ok, err := s.Bind(ctx, "cn=x", []byte("pw"))
			if ok != tc.ok || (err != nil) != tc.hasErr {
				t.Fatalf("Bind = %v, %v; want %v, error %v", ok, err, tc.ok, tc.hasErr)
			}
		})
	}
}

// TestSessionLost: when the directory goes away, a request in flight gets
// an error as its last response, and later sends fail.
func TestSessionLost(t *testing.T) {
	closeCh := make(chan struct{})
	c, err := New(Options{URL: fakeDirectory(t, 0, closeCh)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := c.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan error, 1)
	if _, err := s.Send([]byte{0x4a, 0x01, 'x'}, nil, "dn:uid=a", func(_, _ []byte, last bool, err error) {
		if last {
			got <- err
		}
	}); err != nil {
		t.Fatal(err)
	}
	close(closeCh)
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("last response without error after the directory closed")
		}
	case <-time.After(patience):
		t.Fatal("handler never told that the session was lost")
	}
	if _, err := s.Send([]byte{0x4a, 0x01, 'x'}, nil, "", func([]byte, []byte, bool, error) {}); err == nil {
		t.Fatal("Send on a lost session succeeded")
	}
}

// TestMessageIDWrapSkipsLiveHandlers: after the message ID wraps, an ID
// whose request is still waiting for answers is skipped, so its handler
// is not replaced.
func TestMessageIDWrapSkipsLiveHandlers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	c := &Client{addr: "test"}
	live := func([]byte, []byte, bool, error) {}
	s := &Session{c: c, nc: a, next: maxMessageID - 1,
		handlers: map[int64]func([]byte, []byte, bool, error){1: live, 2: live}}
	cases := []struct {
		name string
		want int64
	}{
		{"ok/last-id", maxMessageID},
		{"ok/wrap-skips-1-and-2", 3},
		{"ok/then-4", 4},
	}
	for _, tc := range cases {
		got, err := s.Send([]byte{0x42, 0x00}, nil, "", func([]byte, []byte, bool, error) {})
		if err != nil || got != tc.want {
			t.Fatalf("%s: Send = %d, %v; want %d", tc.name, got, err, tc.want)
		}
	}
}

// TestSecretNeverPrinted: the service password prints as REDACTED however
// it is formatted or logged.
func TestSecretNeverPrinted(t *testing.T) {
	const pw = "s3rvice-pw"
	o := Options{URL: "ldap://x", ServiceDN: "cn=passgate", ServicePassword: pw}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("opts", slog.Any("opts", o), slog.Any("pw", o.ServicePassword))
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("opts", slog.Any("pw", o.ServicePassword))
	for _, out := range []string{
		fmt.Sprintf("%v", o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o), fmt.Sprintf("%s", o.ServicePassword),
		fmt.Sprintf("%q", o.ServicePassword), fmt.Sprintf("%x", o.ServicePassword), fmt.Sprint(o.ServicePassword), logged.String(),
	} {
		if strings.Contains(out, pw) || strings.Contains(out, fmt.Sprintf("%x", pw)) {
			t.Fatalf("secret printed: %s", out)
		}
	}
	if string(o.ServicePassword) != pw {
		t.Fatal("reveal lost the value")
	}
}
