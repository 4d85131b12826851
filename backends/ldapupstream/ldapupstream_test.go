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

// wrapControls builds a [0] Controls element of ctls.
func wrapControls(ctls ...[]byte) []byte {
	c := bytes.Join(ctls, nil)
	return append(appendLength([]byte{0xa0}, len(c)), c...)
}

// proxyAuthzControl is the proxied authorization control for authz as
// go-ldap encodes it, except for criticality TRUE: go-asn1-ber writes it
// as 0x01, RFC 4511 §5.1 says 0xFF, which passgate sends.
func proxyAuthzControl(t testing.TB, authz string) []byte {
	b := ldap.NewControlString(OIDProxiedAuthz, true, authz).Encode().Bytes()
	i := bytes.Index(b, []byte(OIDProxiedAuthz)) + len(OIDProxiedAuthz)
	if !bytes.Equal(b[i:i+3], []byte{0x01, 0x01, 0x01}) {
		t.Fatalf("go-ldap's control % x has no criticality TRUE after its type", b)
	}
	b[i+2] = 0xff
	return b
}

// TestAppendRequest: the request a relayed search becomes carries the
// client's controls and then the proxied authorization control, encoded
// byte for byte as go-ldap encodes it (but for TRUE); a client's own proxied
// authorization control (either version) and malformed controls are
// refused.
func TestAppendRequest(t *testing.T) {
	paging := ldap.NewControlPaging(10).Encode().Bytes()
	op := []byte{0x63, 0x03, 0x04, 0x01, 'x'}
	tests := []struct {
		name     string
		controls []byte
		authz    string
		err      error
		others   [][]byte // the client's controls that must come first
	}{
		{"ok/no-controls", nil, "dn:uid=alice,dc=x", nil, nil},
		{"ok/paging", wrapControls(paging), "dn:uid=alice,dc=x", nil, [][]byte{paging}},
		{"ok/empty-controls", wrapControls(), "u:alice", nil, nil},
		{"ok/long-authz", nil, "dn:uid=" + strings.Repeat("a", 300) + ",dc=x", nil, nil},
		{"ok/authz-127", nil, "dn:" + strings.Repeat("b", 124), nil, nil},
		{"fail/own-proxy-authz", wrapControls(paging, ldap.NewControlString(OIDProxiedAuthz, true, "dn:cn=admin").Encode().Bytes()), "dn:uid=alice,dc=x", errOwnProxyAuthz, nil},
		{"fail/own-proxy-authz-v1", wrapControls(ldap.NewControlString(oidProxiedAuthzV1, true, "dn:cn=admin").Encode().Bytes()), "dn:uid=alice,dc=x", errOwnProxyAuthz, nil},
		{"fail/malformed", []byte{0xa0, 0x03, 0x30}, "dn:uid=alice,dc=x", ldapwire.ErrMalformed, nil},
		{"fail/trailing-bytes", append(wrapControls(paging), 0), "dn:uid=alice,dc=x", ldapwire.ErrMalformed, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			content, err := controlsContent(tc.controls, OIDProxiedAuthz, oidProxiedAuthzV1)
			if !errors.Is(err, tc.err) {
				t.Fatalf("controlsContent error = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			raw := appendRequest([]byte("kept"), 7, op, content, tc.authz)
			if string(raw[:4]) != "kept" {
				t.Fatal("appendRequest overwrote what was in the buffer")
			}
			m, err := ldapwire.ParseMessage(raw[4:])
			if err != nil || m.ID != 7 || !bytes.Equal(m.Op.Raw, op) {
				t.Fatalf("ParseMessage = %+v, %v", m, err)
			}
			want := wrapControls(append(tc.others, proxyAuthzControl(t, tc.authz))...)
			if !bytes.Equal(m.Controls, want) {
				t.Fatalf("controls\n% x\nwant\n% x", m.Controls, want)
			}
		})
	}
}

// FuzzAppendRequest: whatever controls a client sends, either they are
// refused or the request sent upstream parses, keeps them as they were
// and ends with the proxied authorization control as go-ldap encodes it
// (but for TRUE).
func FuzzAppendRequest(f *testing.F) {
	f.Add(wrapControls(ldap.NewControlPaging(10).Encode().Bytes()), "dn:uid=alice,dc=x")
	f.Add([]byte(nil), "u:alice")
	f.Add(wrapControls(ldap.NewControlString(oidProxiedAuthzV1, true, "dn:cn=admin").Encode().Bytes()), "dn:x")
	f.Add([]byte{0xa0, 0x82, 0x00, 0x02, 0x30, 0x00}, strings.Repeat("z", 200))
	f.Fuzz(func(t *testing.T, controls []byte, authz string) {
		if authz == "" {
			return // Send adds no control then
		}
		content, err := controlsContent(controls, OIDProxiedAuthz, oidProxiedAuthzV1)
		if err != nil {
			return
		}
		if controls != nil {
			if c, _, _ := ldapwire.NextElement(controls); !bytes.Equal(c.Content, content) {
				t.Fatalf("content % x is not the element's % x", content, c.Content)
			}
		}
		op := []byte{0x63, 0x00}
		m, err := ldapwire.ParseMessage(appendRequest(nil, 300, op, content, authz))
		if err != nil || m.ID != 300 || !bytes.Equal(m.Op.Raw, op) {
			t.Fatalf("request does not parse: %+v, %v", m, err)
		}
		want := append(append([]byte(nil), content...), proxyAuthzControl(t, authz)...)
		if c, _, err := ldapwire.NextElement(m.Controls); err != nil || !bytes.Equal(c.Content, want) {
			t.Fatalf("controls % x, want content % x (%v)", m.Controls, want, err)
		}
	})
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

// TestSessionOnIdle: the reader calls the OnIdle function once it has
// handed over everything that arrived and would wait for more, not
// between answers that arrived together; and once more when the session
// ends.
func TestSessionOnIdle(t *testing.T) {
	next, end := make(chan struct{}), make(chan struct{})
	defer close(end)
	url := oneConnDirectory(t, func(nc net.Conn, br *bufio.Reader) {
		entry := []byte{0x64, 0x05, 0x04, 0x01, 'x', 0x30, 0x00}
		done := []byte{0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00}
		for i := 0; ; i++ {
			raw, err := ldapwire.ReadMessage(br, 1<<20)
			if err != nil {
				return
			}
			m, _ := ldapwire.ParseMessage(raw)
			if i == 0 { // entry and result in one write
				nc.Write(append(envelope(m.ID, entry, nil), envelope(m.ID, done, nil)...))
				continue
			}
			nc.Write(envelope(m.ID, entry, nil)) // the entry, then the result when told
			select {
			case <-next:
			case <-end:
				return
			}
			nc.Write(envelope(m.ID, done, nil))
		}
	})
	c, err := New(Options{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 16)
	s.OnIdle(func() { events <- "idle" })
	handler := func(op, _ []byte, last bool, err error) {
		switch {
		case err != nil:
			events <- "lost"
		case last:
			events <- "result"
		default:
			events <- "entry"
		}
	}
	expect := func(want ...string) {
		t.Helper()
		for _, w := range want {
			select {
			case got := <-events:
				if got != w {
					t.Fatalf("event %q, want %q", got, w)
				}
			case <-time.After(patience):
				t.Fatalf("no event, want %q", w)
			}
		}
	}
	search := []byte{0x63, 0x00}
	for _, tc := range []struct {
		name string
		then func()
		want []string
	}{
		{"ok/one-read", nil, []string{"entry", "result", "idle"}},
		{"ok/entry-then-wait", func() { next <- struct{}{} }, []string{"entry", "idle"}},
	} {
		if _, err := s.Send(search, nil, "", handler); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		expect(tc.want...)
		if tc.then != nil {
			tc.then()
			expect("result", "idle")
		}
	}
	if _, err := s.Send(search, nil, "", handler); err != nil {
		t.Fatal(err)
	}
	expect("entry", "idle") // its result never comes
	s.Close()
	expect("lost", "idle")
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

// BenchmarkSessionSearch relays one search at a time through a Session
// to a directory in this process that answers each request with a
// result: the request encoded with the proxied authorization control and
// written, the answer read and handed to the handler. allocs/op counts
// the session's allocations (the directory here allocates one buffer
// per request).
//
//	go test ./backends/ldapupstream -run '^$' -bench SessionSearch -benchmem
func BenchmarkSessionSearch(b *testing.B) {
	url := oneConnDirectory(b, func(nc net.Conn, br *bufio.Reader) {
		done := []byte{0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00}
		out := make([]byte, 0, 64)
		for {
			raw, err := ldapwire.ReadMessageShared(br, 1<<20)
			if err != nil {
				return
			}
			m, _ := ldapwire.ParseMessage(raw)
			out = ldapwire.AppendEnvelope(out[:0], m.ID, done, nil)
			if _, err := nc.Write(out); err != nil {
				return
			}
		}
	})
	c, err := New(Options{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	s, err := c.Open(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	answered := make(chan struct{}, 1)
	handler := func(_, _ []byte, last bool, err error) {
		if last && err == nil {
			answered <- struct{}{}
		}
	}
	search := []byte{0x63, 0x0b, 0x04, 0x01, 'x', 0x0a, 0x01, 0x00, 0x0a, 0x01, 0x00, 0x30, 0x00}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Send(search, nil, "dn:uid=alice,ou=people,dc=example,dc=test", handler); err != nil {
			b.Fatal(err)
		}
		<-answered
	}
}

// oneConnDirectory listens on a loopback port, runs serve on the first
// connection it accepts (closed when serve returns) and returns the
// ldap:// URL of the port, closed at the end of the test.
func oneConnDirectory(tb testing.TB, serve func(nc net.Conn, br *bufio.Reader)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		serve(nc, bufio.NewReader(nc))
	}()
	return "ldap://" + ln.Addr().String()
}
