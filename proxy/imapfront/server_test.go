package imapfront

import (
	"encoding/base64"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/passgate/passgate/policy"
)

const (
	capsPlain   = "IMAP4rev1 IMAP4rev2 SASL-IR ID LITERAL+ STARTTLS LOGINDISABLED"
	capsTLS     = "IMAP4rev1 IMAP4rev2 SASL-IR ID LITERAL+ AUTH=PLAIN AUTH=LOGIN"
	capsTrusted = "IMAP4rev1 IMAP4rev2 SASL-IR ID LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN"
	failLine    = "NO [AUTHENTICATIONFAILED] Authentication failed."
	// unavailableLine is the one temporary failure of every login.
	unavailableLine = "NO [UNAVAILABLE] Authentication service unavailable, try again later."
)

// tlsClient connects, runs STARTTLS and returns the client.
func (ts *testServer) tlsClient(t *testing.T) *rawClient {
	t.Helper()
	rc, greet := ts.dial(t)
	if greet != "* OK [CAPABILITY "+capsPlain+"] passgate ready" {
		t.Fatalf("greeting = %q", greet)
	}
	rc.send("s STARTTLS\r\n")
	rc.expect("s OK Begin TLS negotiation now")
	rc.startTLS(ts.clientTLS)
	return rc
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestCapabilities(t *testing.T) {
	t.Run("plain-untrusted", func(t *testing.T) {
		ts := startServer(t, nil)
		rc, greet := ts.dial(t)
		if greet != "* OK [CAPABILITY "+capsPlain+"] passgate ready" {
			t.Fatalf("greeting = %q", greet)
		}
		rc.send("c1 CAPABILITY\r\n")
		rc.expect("* CAPABILITY "+capsPlain, "c1 OK CAPABILITY completed")
	})
	t.Run("after-starttls", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send("c1 CAPABILITY\r\n")
		rc.expect("* CAPABILITY "+capsTLS, "c1 OK CAPABILITY completed")
	})
	t.Run("implicit-tls", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.ImplicitTLS = true })
		rc, greet := ts.dialTLS(t)
		if greet != "* OK [CAPABILITY "+capsTLS+"] passgate ready" {
			t.Fatalf("greeting = %q", greet)
		}
		rc.send("s STARTTLS\r\n")
		rc.expect("s BAD TLS is already active")
	})
	t.Run("trusted-plaintext", func(t *testing.T) {
		ts := startServer(t, nil)
		ts.dec.set(func(f *fakeDecider) { f.trusted = true })
		_, greet := ts.dial(t)
		if greet != "* OK [CAPABILITY "+capsTrusted+"] passgate ready" {
			t.Fatalf("greeting = %q", greet)
		}
	})
}

func TestCleartextLoginRefused(t *testing.T) {
	// audited: the client sent a password in clear, so the refusal goes
	// to the decision (whose step 1 refuses and audits it), without it.
	tests := []struct {
		name    string
		send    string
		want    []string
		audited bool
	}{
		{"login-atoms", "a LOGIN alice secret-cleartext-pw\r\n", []string{"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in."}, true},
		{"login-sync-literal-no-continuation", "a LOGIN {5}\r\n", []string{"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in."}, false},
		{"login-nonsync-literal", "a LOGIN alice {23+}\r\nsecret-cleartext-pw-lit\r\n", []string{"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in."}, true},
		{"authenticate-plain-ir", "a AUTHENTICATE PLAIN " + b64("\x00alice\x00secret-cleartext-pw") + "\r\n", []string{"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in."}, true},
		{"authenticate-no-ir-no-continuation", "a AUTHENTICATE PLAIN\r\n", []string{"a NO [PRIVACYREQUIRED] Use STARTTLS before logging in."}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			rc, _ := ts.dial(t)
			rc.send(tc.send)
			rc.expect(tc.want...)
			rc.send("z NOOP\r\n")
			rc.expect("z OK NOOP completed")
			attempts, _, _ := ts.dec.snapshot()
			reqs, _ := ts.up.snapshot()
			want := 0
			if tc.audited {
				want = 1
			}
			if len(attempts) != want || len(reqs) != 0 {
				t.Fatalf("decider saw %d attempts, upstream %d logins; want %d and none", len(attempts), len(reqs), want)
			}
			for _, a := range attempts {
				if a.TLS || a.Secret != "" {
					t.Fatalf("the refusal reached the decision with TLS %v and a secret: %+v", a.TLS, a)
				}
			}
			if strings.Contains(ts.log.String(), "secret-cleartext") {
				t.Fatal("secret reached the log")
			}
		})
	}
}

func TestStartTLS(t *testing.T) {
	t.Run("injection-discarded", func(t *testing.T) {
		ts := startServer(t, nil)
		rc, _ := ts.dial(t)
		rc.send("s STARTTLS\r\nx LOGIN alice \"" + appSecret + "\"\r\ny CAPABILITY\r\n")
		rc.expect("s OK Begin TLS negotiation now")
		rc.startTLS(ts.clientTLS)
		rc.send("c NOOP\r\n")
		rc.expect("c OK NOOP completed")
		if attempts, _, _ := ts.dec.snapshot(); len(attempts) != 0 {
			t.Fatalf("injected LOGIN reached the decider: %d attempts", len(attempts))
		}
	})
	t.Run("second-starttls", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send("s2 STARTTLS\r\n")
		rc.expect("s2 BAD TLS is already active")
		rc.send("n NOOP\r\n")
		rc.expect("n OK NOOP completed")
	})
	t.Run("tls-clienthello-on-plain-port", func(t *testing.T) {
		ts := startServer(t, nil)
		rc, _ := ts.dial(t)
		rc.send("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
		rc.expect("* BYE TLS handshake on a plaintext port: use STARTTLS")
		rc.expectClosed()
	})
	t.Run("handshake-failure-closes", func(t *testing.T) {
		ts := startServer(t, nil)
		rc, _ := ts.dial(t)
		rc.send("s STARTTLS\r\n")
		rc.expect("s OK Begin TLS negotiation now")
		rc.send("not a tls handshake\r\n")
		rc.expectClosed()
	})
}

func TestLoginImapclient(t *testing.T) {
	ts := startServer(t, nil)
	c, err := imapclient.DialStartTLS(ts.addr, &imapclient.Options{TLSConfig: ts.clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(appUser, appSecret).Wait(); err != nil {
		t.Fatalf("login: %v", err)
	}
	if !c.Caps().Has("IDLE") {
		t.Errorf("caps after login = %v, want the upstream's (IDLE)", c.Caps())
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("noop through relay: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("logout: %v", err)
	}
	reqs, lines := ts.up.snapshot()
	want := LoginRequest{User: appUser, Primary: false, Password: "", Client: reqs[0].Client}
	if len(reqs) != 1 || !reflect.DeepEqual(reqs[0], want) {
		t.Fatalf("upstream requests = %+v, want %+v", reqs, want)
	}
	if !reqs[0].Client.Addr().IsLoopback() {
		t.Errorf("client address = %v", reqs[0].Client)
	}
	if !strings.Contains(strings.Join(lines, "\n"), " NOOP") {
		t.Errorf("upstream lines = %q", lines)
	}
	waitFor(t, "session log", func() bool { return strings.Contains(ts.log.String(), `"msg":"imap session"`) })
	log := ts.log.String()
	for _, want := range []string{`"user":"alice"`, `"credential":"app-password:7 (phone)"`, `"tls_version":"TLS 1.3"`, `"tls_cipher":"TLS_`, `"bytes_in":`, `"bytes_out":`, `"duration":"`, `"ended":"`, `"conn_id":1`, `"proto":"imap"`, `"outcome":"relayed"`, `"remote_addr":"127.0.0.1:`} {
		if !strings.Contains(log, want) {
			t.Errorf("session log lacks %s: %s", want, log)
		}
	}
	if strings.Contains(log, "abcd efgh") {
		t.Error("secret reached the log")
	}
}

func TestAuthenticateImapclient(t *testing.T) {
	ts := startServer(t, func(o *Options) { o.ImplicitTLS = true })
	c, err := imapclient.DialTLS(ts.addr, &imapclient.Options{TLSConfig: ts.clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Authenticate(sasl.NewPlainClient("", primaryUser, primaryPass)); err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
	reqs, _ := ts.up.snapshot()
	if len(reqs) != 1 || !reqs[0].Primary || string(reqs[0].Password) != primaryPass || reqs[0].User != primaryUser {
		t.Fatalf("upstream requests = %+v", reqs)
	}
	_, primaries, _ := ts.dec.snapshot()
	if !reflect.DeepEqual(primaries, []bool{true}) {
		t.Fatalf("primary results = %v, want [true]", primaries)
	}
}

// TestLoginForms checks every way clients send credentials (clients.md).
func TestLoginForms(t *testing.T) {
	ok := "OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
	tests := []struct {
		name     string
		exchange []string // alternately client sends (">") and server line expected ("<")
		user     string
		secret   string
	}{
		{"login/quoted-escapes", []string{`>a LOGIN "al\"ice" "p\\w\"d"`, "<a " + failLine}, `al"ice`, `p\w"d`},
		{"login/atoms", []string{">a LOGIN bob " + primaryPass, "<a " + ok}, "bob", primaryPass},
		{"login/sync-literals", []string{">a LOGIN {3}", "<+ Ready", ">bob {14}", "<+ Ready", ">" + primaryPass, "<a " + ok}, "bob", primaryPass},
		{"login/empty-literal", []string{">a LOGIN {5}", "<+ Ready", ">carol {0}", "<+ Ready", ">", "<a " + failLine}, "carol", ""},
		{"login/nonsync-literals", []string{">a LOGIN {3+}\r\nbob {14+}\r\n" + primaryPass, "<a " + ok}, "bob", primaryPass},
		{"plain/ir", []string{">a AUTHENTICATE PLAIN " + b64("\x00bob\x00"+primaryPass), "<a " + ok}, "bob", primaryPass},
		{"plain/ir-authzid-same", []string{">a AUTHENTICATE PLAIN " + b64("bob\x00bob\x00"+primaryPass), "<a " + ok}, "bob", primaryPass},
		{"plain/continuation", []string{">a AUTHENTICATE PLAIN", "<+ ", ">" + b64("\x00bob\x00"+primaryPass), "<a " + ok}, "bob", primaryPass},
		{"plain/unpadded", []string{">a AUTHENTICATE plain " + strings.TrimRight(b64("\x00bob\x00"+primaryPass+"x"), "="), "<a " + failLine}, "bob", primaryPass + "x"},
		{"login-mech/continuations", []string{">a AUTHENTICATE LOGIN", "<+ VXNlcm5hbWU6", ">" + b64("bob"), "<+ UGFzc3dvcmQ6", ">" + b64(primaryPass), "<a " + ok}, "bob", primaryPass},
		{"login-mech/ir", []string{">a AUTHENTICATE LOGIN " + b64("bob"), "<+ UGFzc3dvcmQ6", ">" + b64(primaryPass), "<a " + ok}, "bob", primaryPass},
		{"login-mech/empty-password", []string{">a AUTHENTICATE LOGIN " + b64("carol"), "<+ UGFzc3dvcmQ6", ">=", "<a " + failLine}, "carol", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			rc := ts.tlsClient(t)
			for _, step := range tc.exchange {
				if strings.HasPrefix(step, ">") {
					rc.send(step[1:] + "\r\n")
				} else {
					rc.expect(step[1:])
				}
			}
			attempts, _, _ := ts.dec.snapshot()
			if len(attempts) != 1 {
				t.Fatalf("attempts = %d, want 1", len(attempts))
			}
			a := attempts[0]
			if a.User != tc.user || string(a.Secret) != tc.secret || !a.TLS || a.Proto != policy.IMAP || a.Received.IsZero() {
				t.Fatalf("attempt = %q/%q tls=%v proto=%q, want %q/%q", a.User, string(a.Secret), a.TLS, a.Proto, tc.user, tc.secret)
			}
		})
	}
}

func TestAuthenticateRefusals(t *testing.T) {
	tests := []struct {
		name     string
		exchange []string
	}{
		{"plain/cancel", []string{">a AUTHENTICATE PLAIN", "<+ ", ">*", "<a BAD Authentication cancelled"}},
		{"login-mech/cancel-at-password", []string{">a AUTHENTICATE LOGIN " + b64("bob"), "<+ UGFzc3dvcmQ6", ">*", "<a BAD Authentication cancelled"}},
		{"plain/empty", []string{">a AUTHENTICATE PLAIN =", "<a BAD Invalid PLAIN response"}},
		{"plain/bad-base64", []string{">a AUTHENTICATE PLAIN !!!", "<a BAD Invalid base64 in SASL response"}},
		{"unknown-mechanism", []string{">a AUTHENTICATE CRAM-MD5", "<a NO Unsupported authentication mechanism"}},
		{"no-mechanism", []string{">a AUTHENTICATE", "<a BAD AUTHENTICATE expects a mechanism and an optional initial response"}},
		{"login-one-arg", []string{">a LOGIN bob", "<a BAD LOGIN expects a user name and a password"}},
		{"unknown-command", []string{">a SELECT INBOX", "<a BAD Command unknown or not allowed before login"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			rc := ts.tlsClient(t)
			for _, step := range tc.exchange {
				if strings.HasPrefix(step, ">") {
					rc.send(step[1:] + "\r\n")
				} else {
					rc.expect(step[1:])
				}
			}
			rc.send("n NOOP\r\n")
			rc.expect("n OK NOOP completed")
			if attempts, _, _ := ts.dec.snapshot(); len(attempts) != 0 {
				t.Fatalf("attempts = %d, want 0", len(attempts))
			}
		})
	}
}

// TestFailureIdentical checks that every reason of a failed login gives the
// same bytes after the failure delay.
func TestFailureIdentical(t *testing.T) {
	const delay = 150 * time.Millisecond
	tests := []struct {
		name    string
		login   string
		primary []bool // PrimaryResult calls expected
	}{
		{"deny/wrong-secret", `a LOGIN alice "wrong"`, nil},
		{"deny/unknown-user", `a LOGIN nobody "x"`, nil},
		{"upstream-refused/primary", `a LOGIN bob "wrong-primary"`, []bool{false}},
		{"upstream-refused/unknown-upstream-user", `a LOGIN ghost "pw"`, []bool{false}},
		{"bug/allow-without-kind", `a LOGIN weird "x"`, nil},
		{"front/foreign-authzid", "a AUTHENTICATE PLAIN " + b64("alice\x00bob\x00"+primaryPass), nil},
		{"front/control-in-user", "a LOGIN {5}\r\nb\tob {14}\r\n" + primaryPass, nil},
	}
	var first []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, func(o *Options) { o.ImplicitTLS = true })
			ts.dec.set(func(f *fakeDecider) { f.delay = delay })
			rc, _ := ts.dialTLS(t)
			start := time.Now()
			if strings.Contains(tc.login, "{5}") {
				parts := strings.SplitAfter(tc.login, "}\r\n")
				rc.send(parts[0])
				rc.expect("+ Ready")
				rc.send(parts[1])
				rc.expect("+ Ready")
				rc.send(parts[2] + "\r\n")
			} else {
				rc.send(tc.login + "\r\n")
			}
			rc.c.SetReadDeadline(time.Now().Add(patience))
			got, err := rc.br.ReadBytes('\n')
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took < delay {
				t.Errorf("failure after %v, want at least %v", took, delay)
			}
			if string(got) != "a "+failLine+"\r\n" {
				t.Fatalf("reply = %q", got)
			}
			if first == nil {
				first = got
			} else if string(first) != string(got) {
				t.Fatalf("reply %q differs from %q", got, first)
			}
			_, primaries, fails := ts.dec.snapshot()
			if fails != 1 {
				t.Errorf("Fail called %d times, want 1", fails)
			}
			if !reflect.DeepEqual(primaries, tc.primary) {
				t.Errorf("primary results = %v, want %v", primaries, tc.primary)
			}
			if strings.Contains(ts.log.String(), "secret-upstream-text") {
				t.Error("upstream text reached the log as a client reply")
			}
		})
	}
}

func TestTemporaryFailures(t *testing.T) {
	// Both temporary failures get one text, after the failure delay, so
	// that the client cannot tell the store from the upstream, nor learn
	// that its secret got as far as the upstream.
	const want = "a NO [UNAVAILABLE] Authentication service unavailable, try again later."
	tests := []struct {
		name      string
		decErr    error
		upErr     error
		primaries []bool
	}{
		{"decide-error", errors.New("store down"), nil, nil},
		{"upstream-unreachable", nil, errors.New("dial 10.0.0.1:143: connection refused SECRETTEXT"), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, nil)
			ts.dec.set(func(f *fakeDecider) { f.err = tc.decErr })
			ts.up.set(func(f *fakeUpstream) { f.err = tc.upErr })
			rc := ts.tlsClient(t)
			rc.send("a LOGIN bob " + primaryPass + "\r\n")
			rc.expect(want)
			_, primaries, fails := ts.dec.snapshot()
			if fails != 1 || !reflect.DeepEqual(primaries, tc.primaries) {
				t.Errorf("fails = %d, primaries = %v; want 1, %v", fails, primaries, tc.primaries)
			}
			ts.dec.mu.Lock()
			un := ts.dec.unavailables
			ts.dec.mu.Unlock()
			if un != 1 {
				t.Errorf("Unavailable called %d times, want 1 (every outcome is audited)", un)
			}
		})
	}
}

func TestPipelinedAfterLogin(t *testing.T) {
	ts := startServer(t, nil)
	ts.up.set(func(f *fakeUpstream) { f.extra = "* 3 EXISTS\r\n" })
	rc := ts.tlsClient(t)
	rc.send("a LOGIN bob " + primaryPass + "\r\nb NOOP\r\nc SELECT INBOX\r\n")
	rc.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in", "* 3 EXISTS", "b OK NOOP done by upstream", "c OK SELECT done by upstream")
	_, lines := ts.up.snapshot()
	if !reflect.DeepEqual(lines, []string{"b NOOP", "c SELECT INBOX"}) {
		t.Fatalf("upstream received %q", lines)
	}
}

func TestPipelinedAfterFailedLogin(t *testing.T) {
	ts := startServer(t, nil)
	rc := ts.tlsClient(t)
	rc.send("a LOGIN bob wrong\r\nb NOOP\r\nc SELECT INBOX\r\n")
	rc.expect("a "+failLine, "b OK NOOP completed", "c BAD Command unknown or not allowed before login")
	if _, lines := ts.up.snapshot(); len(lines) != 0 {
		t.Fatalf("upstream received %q", lines)
	}
}

func TestOKTextSanitized(t *testing.T) {
	ts := startServer(t, nil)
	ts.up.set(func(f *fakeUpstream) { f.okText = "OK Logged in\r\n* injected" })
	rc := ts.tlsClient(t)
	rc.send("x1 LOGIN bob " + primaryPass + "\r\nn NOOP\r\n")
	rc.expect("x1 OK Logged in", "n OK NOOP done by upstream")
}

func TestID(t *testing.T) {
	ts := startServer(t, nil)
	rc := ts.tlsClient(t)
	rc.send(`i ID ("name" "OfflineIMAP" "version" "8.0" "x-originating-ip" "203.0.113.66" "os" {5}` + "\r\n")
	rc.expect("+ Ready")
	rc.send("Linux)\r\n")
	rc.expect(`* ID ("name" "passgate")`, "i OK ID completed")
	rc.send("j ID NIL\r\n")
	rc.expect(`* ID ("name" "passgate")`, "j OK ID completed")
	rc.send(`k ID ("name" "OfflineIMAP" "version" "8.0" "x-originating-ip" "203.0.113.66")` + "\r\n")
	rc.expect(`* ID ("name" "passgate")`, "k OK ID completed")
	rc.send("l ID (\"name\")\r\n")
	rc.expect("l BAD Invalid ID arguments")
	rc.send("a LOGIN bob " + primaryPass + "\r\n")
	rc.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	attempts, _, _ := ts.dec.snapshot()
	if len(attempts) != 1 || attempts[0].ClientName != "OfflineIMAP 8.0" {
		t.Fatalf("attempts = %+v", attempts)
	}
	reqs, _ := ts.up.snapshot()
	want := []IDField{{"name", "OfflineIMAP"}, {"version", "8.0"}}
	if len(reqs) != 1 || !reflect.DeepEqual(reqs[0].ClientID, want) {
		t.Fatalf("forwarded ID = %+v, want %+v", reqs[0].ClientID, want)
	}
}

func TestParseID(t *testing.T) {
	tok := func(k tokenKind, v string) token { return token{kind: k, val: []byte(v)} }
	open, cls := token{kind: tokOpen}, token{kind: tokClose}
	tests := []struct {
		name   string
		args   []token
		want   []IDField
		wantOK bool
	}{
		{"nil", []token{tok(tokAtom, "nil")}, nil, true},
		{"empty-list", []token{open, cls}, nil, true},
		{"standard-kept", []token{open, tok(tokQuoted, "NAME"), tok(tokQuoted, "K-9"), tok(tokQuoted, "vendor"), tok(tokLiteral, "x"), cls}, []IDField{{"name", "K-9"}, {"vendor", "x"}}, true},
		{"x-fields-dropped", []token{open, tok(tokQuoted, "x-originating-ip"), tok(tokQuoted, "1.2.3.4"), cls}, nil, true},
		{"nil-value-dropped", []token{open, tok(tokQuoted, "name"), tok(tokAtom, "NIL"), cls}, nil, true},
		{"control-value-dropped", []token{open, tok(tokQuoted, "name"), tok(tokLiteral, "a\r\nb"), cls}, nil, true},
		{"long-value-refused", []token{open, tok(tokQuoted, "name"), tok(tokQuoted, strings.Repeat("v", 1025)), cls}, nil, false},
		{"odd", []token{open, tok(tokQuoted, "name"), cls}, nil, false},
		{"atom-key", []token{open, tok(tokAtom, "name"), tok(tokQuoted, "x"), cls}, nil, false},
		{"no-parens", []token{tok(tokQuoted, "name"), tok(tokQuoted, "x")}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseID(tc.args)
			if ok != tc.wantOK || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("= %+v %v, want %+v %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestBounds(t *testing.T) {
	t.Run("line-too-long", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.MaxLineLength = 100 })
		rc, _ := ts.dial(t)
		rc.send("a LOGIN " + strings.Repeat("x", 200) + "\r\n")
		rc.expect("* BYE [TOOBIG] Command line too long")
		rc.expectClosed()
	})
	t.Run("line-without-end", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.MaxLineLength = 100 })
		rc, _ := ts.dial(t)
		rc.send(strings.Repeat("x", 5000))
		rc.expect("* BYE [TOOBIG] Command line too long")
		rc.expectClosed()
	})
	t.Run("huge-literal", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send("a LOGIN {4294967295}\r\n")
		rc.expect("a BAD [TOOBIG] Literal too large", "* BYE Closing connection")
		rc.expectClosed()
	})
	t.Run("huge-nonsync-literal", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		rc.send("a LOGIN bob {8193+}\r\n")
		rc.expect("* BYE [TOOBIG] Literal too large")
		rc.expectClosed()
	})
	t.Run("too-many-commands", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.MaxCommands = 5 })
		rc, _ := ts.dial(t)
		for i := 0; i < 5; i++ {
			rc.send("n NOOP\r\n")
			rc.expect("n OK NOOP completed")
		}
		rc.send("n NOOP\r\n")
		rc.expect("* BYE Too many commands before login")
		rc.expectClosed()
	})
	t.Run("too-many-bad-lines", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.MaxCommands = 3 })
		rc, _ := ts.dial(t)
		rc.send("\r\n\r\n\r\n\r\n")
		rc.expect("* BAD Empty command line", "* BAD Empty command line", "* BAD Empty command line", "* BYE Too many commands before login")
		rc.expectClosed()
	})
	t.Run("pre-login-timeout", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.PreLoginTimeout = 300 * time.Millisecond })
		rc, _ := ts.dial(t)
		start := time.Now()
		rc.send("a NOOP\r\n")
		rc.expect("a OK NOOP completed")
		rc.send("b LOG") // a slow client never ends its line
		rc.expect("* BYE Autologout: no login within the time allowed")
		rc.expectClosed()
		if took := time.Since(start); took > DefaultPreLoginTimeout/2 { // the option, not the default
			t.Errorf("closed after %v", took)
		}
		waitFor(t, "session log", func() bool { return strings.Contains(ts.log.String(), `"ended":"timeout"`) })
	})
	t.Run("auth-failures-then-close", func(t *testing.T) {
		ts := startServer(t, func(o *Options) { o.MaxAuthFailures = 3 })
		rc := ts.tlsClient(t)
		// Thunderbird's fallbacks: PLAIN, the LOGIN mechanism, then LOGIN.
		rc.send("a AUTHENTICATE PLAIN " + b64("\x00alice\x00bad1") + "\r\n")
		rc.expect("a " + failLine)
		rc.send("b AUTHENTICATE LOGIN " + b64("alice") + "\r\n")
		rc.expect("+ UGFzc3dvcmQ6")
		rc.send(b64("bad2") + "\r\n")
		rc.expect("b " + failLine)
		rc.send("c LOGIN alice bad3\r\n")
		rc.expect("c "+failLine, "* BYE Too many authentication failures")
		rc.expectClosed()
		if attempts, _, _ := ts.dec.snapshot(); len(attempts) != 3 {
			t.Fatalf("attempts = %d, want 3", len(attempts))
		}
	})
	t.Run("success-after-failures", func(t *testing.T) {
		ts := startServer(t, nil)
		rc := ts.tlsClient(t)
		for i := 0; i < 4; i++ {
			rc.send("a LOGIN alice bad\r\n")
			rc.expect("a " + failLine)
		}
		rc.send("b LOGIN alice \"" + appSecret + "\"\r\n")
		rc.expect("b OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	})
}

func TestLogoutPreLogin(t *testing.T) {
	ts := startServer(t, nil)
	rc, _ := ts.dial(t)
	rc.send("z LOGOUT\r\n")
	rc.expect("* BYE Logging out", "z OK LOGOUT completed")
	rc.expectClosed()
}

func TestRevokeClosesSession(t *testing.T) {
	ts := startServer(t, nil)
	rc := ts.tlsClient(t)
	rc.send("a LOGIN alice \"" + appSecret + "\"\r\n")
	rc.expect("a OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	waitFor(t, "tracked session", func() bool { return ts.srv.opts.Relays.Len() == 1 })
	if n := ts.srv.opts.Relays.Revoke(appID); n != 1 {
		t.Fatalf("revoked %d sessions, want 1", n)
	}
	rc.expect("* BYE Session closed: the app password it logged in with was deleted")
	rc.expectClosed()
	waitFor(t, "session log", func() bool { return strings.Contains(ts.log.String(), `"ended":"revoked"`) })
}
