package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/backends/imapupstream"
	"github.com/passgate/passgate/cmd/passgate/cli"
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
	// A socket bound to the port but not listening: connections to it
	// are refused, and while the test runs no other listener (of this
	// process or another) can be given the port and answer instead.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(os.NewSyscallError("socket", err))
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(os.NewSyscallError("bind", err))
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(os.NewSyscallError("getsockname", err))
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
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
	// Other tests deliver more (IDLE): the seeded ones come first.
	if int(sel.NumMessages) < len(d.Messages) {
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
			ctx, cancel := context.WithTimeout(context.Background(), patience)
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
			} else {
				// Dovecot's line for this login, found by passgate's own
				// port, is there first: then nothing more would come.
				_, port, _ := net.SplitHostPort(conn.LocalAddr().String())
				waitLog(t, d, "rport="+port+",")
				if d.LogContains(rip) {
					t.Errorf("Dovecot's log shows %s although nothing was forwarded", rip)
				}
			}
		})
	}
}

// waitLog waits up to patience for Dovecot's log to contain substr.
func waitLog(t *testing.T, d *testenv.Dovecot, substr string) {
	t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
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
			ctx, cancel := context.WithTimeout(context.Background(), patience)
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
			ctx, cancel := context.WithTimeout(context.Background(), patience)
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
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			conn, _, err := u.Login(ctx, imapupstream.Request{User: "erin", Password: d.Users["erin"], Client: nextClient(t)})
			if err != nil {
				t.Fatalf("Login as erin with a password needing a literal: %v", err)
			}
			conn.Close()
		})
	}
}

// ---------------------------------------------------------------------
// End to end through passgate: "passgate serve" in-process (cli.Run), a
// real Dovecot behind it, real clients in front (imapclient, curl,
// python3 imaplib).

// lockedBuffer collects passgate's output from its goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// passgateInstance is one "passgate serve" running in this process.
type passgateInstance struct {
	dir       string
	config    string
	imapAddr  string // STARTTLS
	imapsAddr string // implicit TLS
	metrics   string // metrics.listen, "" without passgateConfig.metrics
	webURL    string // web.public_url (https://localhost:port), "" without passgateConfig.web
	out       *lockedBuffer
	cancel    context.CancelFunc
	done      chan int
	proc      *exec.Cmd // when run as a process (passgateConfig.binary)
}

// kill9 kills an instance run as a process with SIGKILL and waits for it.
func (p *passgateInstance) kill9(t testing.TB) {
	t.Helper()
	if p.proc == nil {
		t.Fatal("kill9: the instance runs in this process (set passgateConfig.binary)")
	}
	p.proc.Process.Kill()
	code := <-p.done
	p.done <- code
}

// passgateConfig holds what differs between the tests' configurations.
type passgateConfig struct {
	upstreams    []string // default: the shared Dovecot's STARTTLS address
	upstreamTLS  string   // default starttls
	failureDelay string   // default 100ms
	tlsMin       string   // tls.min_version; default "1.2"
	metrics      bool     // serve metrics.listen on a free port
	postgresDSN  string   // store in this PostgreSQL database instead of SQLite
	sqlitePath   string   // store in this SQLite file instead of a new one in the instance's directory
	keyFile      string   // the server key of another instance on the same store
	binary       string   // run this passgate binary as a process instead of cli.Run in this one
	trusted      []string // policy.trusted_networks
	proxies      []string // policy.proxy_networks
	policyYAML   string   // more lines of the policy section, indented by two spaces
	web          bool     // serve the portal (web.verify imap) on a free port
	webYAML      string   // more lines of the web section, indented by two spaces
	extraYAML    string   // more top-level sections, appended to the file

	beforeServe func(p *passgateInstance) // runs instead of "passgate migrate" before serve starts
}

// startPassgate writes a configuration in a new directory, runs "passgate
// serve" with it until the test ends, and waits until both IMAP listeners
// accept connections. The upstream is Dovecot over STARTTLS, verified with
// the test CA, logged in to as the master user (authzid), with the client
// address forwarded by ID.
func startPassgate(t testing.TB, pc passgateConfig) *passgateInstance {
	t.Helper()
	d := env.dovecot
	if len(pc.upstreams) == 0 {
		pc.upstreams = []string{d.IMAPAddr}
	}
	if pc.failureDelay == "" {
		pc.failureDelay = "100ms"
	}
	if pc.upstreamTLS == "" {
		pc.upstreamTLS = "starttls"
	}
	if pc.tlsMin == "" {
		pc.tlsMin = "1.2"
	}
	dir := t.TempDir()
	ports := make([]int, 4)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	masterFile := filepath.Join(dir, "master.secret")
	if err := os.WriteFile(masterFile, []byte(d.MasterPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(pc.upstreams))
	for i, a := range pc.upstreams {
		quoted[i] = strconv.Quote(a)
	}
	cfg := fmt.Sprintf(`store:
  driver: sqlite
  dsn: %[1]s
key_file: %[2]s
tls:
  cert_file: %[3]s
  key_file: %[4]s
  min_version: "%[13]s"
policy:
  failure_delay: %[5]s
imap:
  listen: 127.0.0.1:%[6]d
  listen_tls: 127.0.0.1:%[7]d
  upstream:
    addresses: [%[8]s]
    tls: %[12]s
    ca_file: %[9]s
    server_name: 127.0.0.1
    login: master
    master_user: %[10]s
    master_password_file: %[11]s
    master_style: authzid
    forward_client: id
    dial_timeout: 2s
log:
  level: debug
  format: json
`, strconv.Quote(filepath.Join(dir, "passgate.db")), strconv.Quote(filepath.Join(dir, "passgate.key")),
		strconv.Quote(env.certs.CertFile), strconv.Quote(env.certs.KeyFile), pc.failureDelay,
		ports[0], ports[1], strings.Join(quoted, ", "), strconv.Quote(env.certs.CAFile),
		strconv.Quote(d.MasterUser), strconv.Quote(masterFile), pc.upstreamTLS, pc.tlsMin)
	if pc.metrics {
		cfg += fmt.Sprintf("metrics:\n  listen: 127.0.0.1:%d\n", ports[2])
	}
	if pc.web {
		cfg += fmt.Sprintf("web:\n  listen: 127.0.0.1:%[1]d\n  public_url: https://localhost:%[1]d\n  verify: imap\n%[2]s", ports[3], pc.webYAML)
	}
	cfg += pc.extraYAML
	if pc.policyYAML != "" {
		cfg = strings.Replace(cfg, "policy:\n", "policy:\n"+pc.policyYAML, 1)
	}
	if len(pc.trusted) > 0 || len(pc.proxies) > 0 {
		cfg = strings.Replace(cfg, "policy:\n", fmt.Sprintf("policy:\n  trusted_networks: [%s]\n  proxy_networks: [%s]\n",
			strings.Join(pc.trusted, ", "), strings.Join(pc.proxies, ", ")), 1)
	}
	if pc.keyFile != "" {
		cfg = strings.Replace(cfg, "key_file: "+strconv.Quote(filepath.Join(dir, "passgate.key")), "key_file: "+strconv.Quote(pc.keyFile), 1)
	}
	if pc.postgresDSN != "" {
		cfg = strings.Replace(cfg, "store:\n  driver: sqlite\n  dsn: "+strconv.Quote(filepath.Join(dir, "passgate.db"))+"\n",
			"store:\n  driver: postgres\n  dsn: "+strconv.Quote(pc.postgresDSN)+"\n", 1)
	}
	if pc.sqlitePath != "" {
		cfg = strings.Replace(cfg, "  dsn: "+strconv.Quote(filepath.Join(dir, "passgate.db"))+"\n", "  dsn: "+strconv.Quote(pc.sqlitePath)+"\n", 1)
	}
	p := &passgateInstance{
		dir:       dir,
		config:    filepath.Join(dir, "passgate.yaml"),
		imapAddr:  fmt.Sprintf("127.0.0.1:%d", ports[0]),
		imapsAddr: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		metrics:   map[bool]string{true: fmt.Sprintf("127.0.0.1:%d", ports[2])}[pc.metrics],
		webURL:    map[bool]string{true: fmt.Sprintf("https://localhost:%d", ports[3])}[pc.web],
		out:       &lockedBuffer{},
		done:      make(chan int, 1),
	}
	if err := os.WriteFile(p.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Like an operator: migrate first, then serve.
	if pc.beforeServe != nil {
		pc.beforeServe(p)
	} else {
		p.admin(t, "migrate")
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	if pc.binary != "" {
		p.proc = exec.Command(pc.binary, "serve", "--config", p.config)
		p.proc.Stdout, p.proc.Stderr = p.out, p.out
		p.proc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := p.proc.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			p.proc.Wait()
			p.done <- p.proc.ProcessState.ExitCode()
		}()
		p.cancel = func() { p.proc.Process.Signal(syscall.SIGTERM) }
	} else {
		go func() { p.done <- cli.Run(ctx, []string{"serve", "--config", p.config}, p.out, p.out) }()
	}
	t.Cleanup(func() {
		cancel()
		p.cancel()
		select {
		case code := <-p.done:
			if code != 0 && !(p.proc != nil && p.proc.ProcessState.String() == "signal: killed") {
				t.Errorf("passgate serve exited %d after SIGTERM-like cancel, want 0", code)
			}
		case <-time.After(patience):
			t.Errorf("passgate serve did not return %v after its context ended", patience)
		}
		if t.Failed() {
			t.Logf("passgate output (tail):\n%s", tail(p.out.String(), 40))
		}
	})
	for deadline := time.Now().Add(patience); ; time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-p.done:
			p.done <- code
			t.Fatalf("passgate serve exited %d during start:\n%s", code, tail(p.out.String(), 40))
		default:
		}
		if dialable(p.imapAddr) && dialable(p.imapsAddr) && (p.metrics == "" || dialable(p.metrics)) &&
			(!pc.web || dialable(fmt.Sprintf("127.0.0.1:%d", ports[3]))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("passgate serve does not listen on %s and %s after %v:\n%s", p.imapAddr, p.imapsAddr, patience, tail(p.out.String(), 40))
		}
	}
	return p
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// admin runs one admin command of the passgate CLI against this
// instance's configuration and returns its standard output.
func (p *passgateInstance) admin(t testing.TB, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if code := cli.Run(ctx, append(args, "--config", p.config), &stdout, &stderr); code != 0 {
		t.Fatalf("passgate %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// enforce adds user with MFA enforced.
func (p *passgateInstance) enforce(t testing.TB, user string) {
	t.Helper()
	p.admin(t, "user", "add", user, "--mfa", "enforced")
}

// appPassword creates an app password and returns it as printed (four
// groups of four letters).
func (p *passgateInstance) appPassword(t testing.TB, user, label string, extra ...string) string {
	t.Helper()
	out := p.admin(t, append([]string{"app-password", "create", user, "--label", label, "--json"}, extra...)...)
	var created struct {
		ID       int64  `json:"id"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Password == "" {
		t.Fatalf("app-password create --json printed %q: %v", out, err)
	}
	return created.Password
}

// dialPassgate connects imapclient to passgate over STARTTLS or implicit
// TLS, from the local address laddr when it is not empty.
func (p *passgateInstance) dial(t testing.TB, implicit bool, laddr string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = env.certs.ClientTLS()
	d := net.Dialer{Timeout: patience}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	var c *imapclient.Client
	if implicit {
		conn, err := tls.DialWithDialer(&d, "tcp", p.imapsAddr, opts.TLSConfig)
		if err != nil {
			t.Fatalf("TLS to passgate: %v", err)
		}
		c = imapclient.New(conn, opts)
	} else {
		conn, err := d.Dial("tcp", p.imapAddr)
		if err != nil {
			t.Fatalf("dial passgate: %v", err)
		}
		if c, err = imapclient.NewStartTLS(conn, opts); err != nil {
			t.Fatalf("STARTTLS to passgate: %v", err)
		}
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const uniformFailure = "NO [AUTHENTICATIONFAILED] Authentication failed."

// rawLogin logs in over implicit TLS with a raw conversation and returns
// the exact bytes of the tagged reply to LOGIN.
func (p *passgateInstance) rawLogin(t testing.TB, user, password string) string {
	t.Helper()
	return p.rawLoginFrom(t, "", user, password)
}

// rawLoginFrom is rawLogin from the local address laddr (127.0.0.x), so
// that a login that fails at Dovecot gets its failure penalty there and
// slows no other test.
func (p *passgateInstance) rawLoginFrom(t testing.TB, laddr, user, password string) string {
	t.Helper()
	line, err := p.loginReply(laddr, user, password)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// loginReply is rawLoginFrom for a goroutine other than the test's: it
// returns its failure instead of ending the test.
func (p *passgateInstance) loginReply(laddr, user, password string) (string, error) {
	d := &net.Dialer{Timeout: patience}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	conn, err := tls.DialWithDialer(d, "tcp", p.imapsAddr, env.certs.ClientTLS())
	if err != nil {
		return "", fmt.Errorf("TLS to passgate: %w", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", strconv.Quote(user), strconv.Quote(password))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reply to LOGIN: %w", err)
		}
		if strings.HasPrefix(line, "a ") {
			fmt.Fprintf(conn, "b LOGOUT\r\n")
			return line, nil
		}
	}
}

func TestIMAPPassgateMailboxSession(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "Outlook 2010")
	for _, tc := range []struct {
		name     string
		implicit bool
	}{{"ok/starttls", false}, {"ok/implicit-tls", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := p.dial(t, tc.implicit, "", nil)
			if err := c.Login("alice", pw).Wait(); err != nil {
				t.Fatalf("LOGIN with the app password: %v", err)
			}
			boxes, err := c.List("", "*", nil).Collect()
			if err != nil {
				t.Fatalf("LIST: %v", err)
			}
			if !slices.ContainsFunc(boxes, func(b *imap.ListData) bool { return b.Mailbox == "INBOX" }) {
				t.Errorf("LIST has no INBOX: %v", boxes)
			}
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil {
				t.Fatalf("SELECT INBOX: %v", err)
			}
			if int(sel.NumMessages) < len(d.Messages) {
				t.Fatalf("INBOX holds %d messages, %d seeded", sel.NumMessages, len(d.Messages))
			}
			for i, want := range d.Messages {
				if got := fetchBody(t, c, imap.UID(i+1)); !bytes.Equal(got, want) {
					t.Errorf("FETCH UID %d through passgate: %d bytes, not the %d seeded", i+1, len(got), len(want))
				}
			}
			// A name of its own each run, so that -count=N works on one Dovecot.
			box := fmt.Sprintf("Saved-%s-%d", strings.TrimPrefix(tc.name, "ok/"), time.Now().UnixNano())
			if err := c.Create(box, nil).Wait(); err != nil {
				t.Fatalf("CREATE %s: %v", box, err)
			}
			msg := testenv.Message(900, 3000)
			app := c.Append(box, int64(len(msg)), nil)
			if _, err := app.Write(msg); err != nil {
				t.Fatalf("APPEND: %v", err)
			}
			if err := app.Close(); err != nil {
				t.Fatalf("APPEND: %v", err)
			}
			if _, err := app.Wait(); err != nil {
				t.Fatalf("APPEND: %v", err)
			}
			if _, err := c.Select(box, nil).Wait(); err != nil {
				t.Fatalf("SELECT %s: %v", box, err)
			}
			if got := fetchBody(t, c, 1); !bytes.Equal(got, msg) {
				t.Errorf("the appended message comes back as %d bytes, not %d", len(got), len(msg))
			}
			if err := c.Logout().Wait(); err != nil {
				t.Errorf("LOGOUT: %v", err)
			}
		})
	}
}

// waitParked waits until passgate's /metrics show n parked directions of
// relayed sessions (relay.Parker) on listener.
func waitParked(t *testing.T, p *passgateInstance, listener string, n float64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(patience); ; time.Sleep(50 * time.Millisecond) {
		code, body := curlGet(t, "http://"+p.metrics+"/metrics")
		got = metricValue(body, "passgate_relay_parked_directions", `listener="`+listener+`"`)
		if code == 200 && got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("passgate_relay_parked_directions{listener=%q} = %v after %v, want %v", listener, got, patience, n)
		}
	}
}

// TestIMAPPassgateIdle: a client in IDLE through passgate sees a message
// that Dovecot receives, after the session has sat idle long enough for
// the relay to let go of its goroutines (both directions parked): the
// upstream's EXISTS wakes its direction, and so does the client's DONE.
func TestIMAPPassgateIdle(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{metrics: true})
	p.enforce(t, "carol")
	pw := p.appPassword(t, "carol", "phone")
	counts := make(chan uint32, 16)
	c := p.dial(t, false, "", &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(m *imapclient.UnilateralDataMailbox) {
			if m.NumMessages != nil {
				counts <- *m.NumMessages
			}
		},
	}})
	if err := c.Login("carol", pw).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	waitParked(t, p, "imap", 2)
	deliverLMTP(t, d, "carol", testenv.Message(901, 500))
	select {
	case n := <-counts:
		if n <= sel.NumMessages {
			t.Errorf("EXISTS %d during IDLE, had %d", n, sel.NumMessages)
		}
	case <-time.After(patience):
		t.Fatalf("no EXISTS during IDLE %v after an LMTP delivery", patience)
	}
	waitParked(t, p, "imap", 2)
	if err := idle.Close(); err != nil {
		t.Fatalf("DONE: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	waitParked(t, p, "imap", 0)
	_, body := curlGet(t, "http://"+p.metrics+"/metrics")
	if v := metricValue(body, "passgate_relay_park_failures_total", `listener="imap"`); v != 0 {
		t.Errorf("passgate_relay_park_failures_total{listener=\"imap\"} = %v, want 0", v)
	}
}

// deliverLMTP delivers msg to user through Dovecot's LMTP listener.
func deliverLMTP(t testing.TB, d *testenv.Dovecot, user string, msg []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", d.LMTPAddr, patience)
	if err != nil {
		t.Fatalf("LMTP: %v", err)
	}
	c := smtp.NewClientLMTP(conn)
	defer c.Close()
	if err := c.SendMail("sender@example.test", []string{user}, bytes.NewReader(msg)); err != nil {
		t.Fatalf("LMTP delivery to %s: %v", user, err)
	}
}

// TestIMAPPassgateUniformFailure: an enforced user's primary password gets
// exactly what a wrong password, an unknown user and a garbage app
// password get, and none of the enforced user's attempts reaches Dovecot.
func TestIMAPPassgateUniformFailure(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	p.appPassword(t, "alice", "laptop")
	before := len(d.Log())
	replies := map[string]string{
		"primary-password": p.rawLogin(t, "alice", d.Users["alice"]),
		"wrong-password":   p.rawLogin(t, "alice", "wrong-pw"),
		"wrong-app-pw":     p.rawLogin(t, "alice", "abcd efgh ijkl mnop"),
		"unknown-user":     p.rawLoginFrom(t, "127.0.0.66", "mallory", "whatever"),
	}
	for name, got := range replies {
		if got != "a "+uniformFailure+"\r\n" {
			t.Errorf("%s: reply %q, want %q", name, got, "a "+uniformFailure+"\r\n")
		}
	}
	// bob has no MFA: his login goes to Dovecot, which logs it after
	// anything it would have logged for the logins before.
	if got := p.rawLoginFrom(t, "127.0.0.67", "bob", d.Users["bob"]); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("bob's login after the refused ones: %q", got)
	}
	waitLog(t, d, "rip=127.0.0.67,")
	delta := d.Log()[before:]
	// An unknown user has no row and the default MFA state (disabled), so
	// that login goes to Dovecot in passthrough, as designed; alice's never.
	for _, s := range []string{"user=<alice>", "passwd-file(alice", "alice*"} {
		if strings.Contains(delta, s) {
			t.Errorf("Dovecot's log shows a login attempt (%q) for a refused login:\n%s", s, delta)
		}
	}
}

func TestIMAPPassgateRevocation(t *testing.T) {
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "tablet")
	c := p.dial(t, false, "", nil)
	if err := c.Login("alice", pw).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	p.admin(t, "app-password", "delete", "alice", "--label", "tablet")
	start := time.Now()
	select {
	case <-c.Closed():
		t.Logf("the live session closed %s after the deletion", time.Since(start).Round(time.Millisecond))
	case <-time.After(patience):
		t.Errorf("the session opened with a deleted app password is still open after %v", patience)
	}
	if got := p.rawLogin(t, "alice", pw); got != "a "+uniformFailure+"\r\n" {
		t.Errorf("login with the deleted app password: %q", got)
	}
}

// TestIMAPPassgateRevocationSaysBye: a client in IDLE through passgate to
// Dovecot, whose app password is deleted, reads an untagged BYE that
// says why, then the end of the connection.
func TestIMAPPassgateRevocationSaysBye(t *testing.T) {
	p := startPassgate(t, passgateConfig{metrics: true})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	conn, err := tls.Dial("tcp", p.imapsAddr, env.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(conn)
	until := func(prefix string) {
		t.Helper()
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %q: %v", prefix, err)
			}
			if strings.HasPrefix(l, prefix) {
				return
			}
		}
	}
	until("* OK")
	fmt.Fprintf(conn, "a LOGIN alice %q\r\nb SELECT INBOX\r\nc IDLE\r\n", pw)
	until("a OK")
	until("b OK")
	until("+ ")
	// Revoked while idle: the relay's goroutines have let go (parked).
	waitParked(t, p, "imaps", 2)
	p.admin(t, "app-password", "delete", "alice", "--label", "phone")
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("after the deletion: %v (read %q)", err, rest)
	}
	// Dovecot may have sent its IDLE keepalive ("* OK Still here") before
	// the deletion: it spreads the first one by a hash of the user and the
	// client's address, anywhere in imap_idle_notify_interval. Untagged
	// lines the upstream sent before are relayed; what passgate adds is
	// one BYE, last, and then the end.
	const bye = "* BYE Session closed: the app password it logged in with was deleted\r\n"
	lines := strings.SplitAfter(string(rest), "\r\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if len(lines) == 0 || lines[len(lines)-1] != bye {
		t.Fatalf("after the deletion the client read %q, want one BYE and the end", rest)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "* ") || strings.HasPrefix(l, "* BYE") {
			t.Fatalf("after the deletion the client read %q before the BYE: want only the upstream's untagged lines", l)
		}
	}
	waitParked(t, p, "imaps", 0)
}

func TestIMAPPassgateRefusedAppPasswords(t *testing.T) {
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	expired := p.appPassword(t, "alice", "short-lived", "--expires", "1s")
	smtpOnly := p.appPassword(t, "alice", "printer", "--scopes", "smtp")
	time.Sleep(1200 * time.Millisecond)
	for name, pw := range map[string]string{"fail/expired": expired, "fail/no-imap-scope": smtpOnly} {
		t.Run(name, func(t *testing.T) {
			if got := p.rawLogin(t, "alice", pw); got != "a "+uniformFailure+"\r\n" {
				t.Errorf("reply %q, want the uniform failure", got)
			}
		})
	}
}

func TestIMAPPassgatePassthroughAndClientAddress(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	// bob has no row: default_mfa disabled, so his primary password goes
	// through to Dovecot in passthrough. The client dials from 127.0.0.55;
	// passgate reaches Dovecot from 127.0.0.1, so Dovecot's log must show
	// 127.0.0.55 as the remote address.
	c := p.dial(t, false, "127.0.0.55", nil)
	if err := c.Login("bob", d.Users["bob"]).Wait(); err != nil {
		t.Fatalf("LOGIN bob with the primary password: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	waitLog(t, d, "user=<bob>, method=PLAIN, rip=127.0.0.55,")
	// An enforced user through an app password: the same.
	p.enforce(t, "dave")
	pw := p.appPassword(t, "dave", "mbsync")
	c2 := p.dial(t, true, "127.0.0.56", nil)
	if err := c2.Login("dave", pw).Wait(); err != nil {
		t.Fatalf("LOGIN dave with an app password: %v", err)
	}
	c2.Logout().Wait()
	waitLog(t, d, "user=<dave>, method=PLAIN, rip=127.0.0.56,")
}

func TestIMAPPassgateUnavailable(t *testing.T) {
	dir, err := os.MkdirTemp(env.dir, "dovecot-own-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	own, err := testenv.StartDovecot(ctx, dir, env.certs)
	if err != nil {
		t.Fatalf("start a Dovecot of this test's own: %v", err)
	}
	t.Cleanup(own.Stop)
	p := startPassgate(t, passgateConfig{upstreams: []string{deadAddr(t), own.IMAPAddr}})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "desktop")
	okLogin := func(when string) {
		t.Helper()
		if got := p.rawLogin(t, "alice", pw); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("%s: reply %q, want a OK", when, got)
		}
	}
	okLogin("with the second upstream up")
	own.Stop()
	if got := p.rawLogin(t, "alice", pw); !strings.HasPrefix(got, "a NO [UNAVAILABLE]") {
		t.Errorf("with every upstream stopped: %q, want a NO [UNAVAILABLE]", got)
	}
	if !strings.Contains(p.out.String(), own.IMAPAddr) {
		t.Errorf("passgate's log does not name the failed upstream %s", own.IMAPAddr)
	}
	if err := own.Start(ctx); err != nil {
		t.Fatalf("restart Dovecot: %v", err)
	}
	okLogin("after an upstream came back")
}

func TestIMAPPassgateCurl(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "curl")
	tests := []struct {
		name     string
		url      string
		password string
		wantExit int
		want     []byte
	}{
		{"ok/starttls", "imap://" + p.imapAddr + "/INBOX;UID=1", pw, 0, d.Messages[0]},
		{"ok/implicit-1mb", "imaps://" + p.imapsAddr + "/INBOX;UID=" + strconv.Itoa(len(d.Messages)), pw, 0, d.Messages[len(d.Messages)-1]},
		{"fail/primary-password", "imaps://" + p.imapsAddr + "/INBOX;UID=1", d.Users["alice"], 67, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			cmd := exec.CommandContext(ctx, "curl", "--silent", "--show-error", "--ssl-reqd",
				"--cacert", env.certs.CAFile, "--user", "alice:"+tc.password, tc.url)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("curl: %v", err)
			}
			if code != tc.wantExit {
				t.Fatalf("curl exit %d, want %d: %s", code, tc.wantExit, stderr.String())
			}
			if tc.want != nil && !bytes.Equal(stdout.Bytes(), tc.want) {
				t.Errorf("curl fetched %d bytes, not the %d seeded", stdout.Len(), len(tc.want))
			}
		})
	}
}

// pythonFetch logs in with imaplib (STARTTLS or implicit TLS), fetches
// every seeded message of the INBOX, and prints the SHA-256 of each.
const pythonFetch = `
import hashlib, imaplib, ssl, sys
host, port, mode, ca, user, pw, n = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
if mode == "implicit":
    m = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx)
else:
    m = imaplib.IMAP4(host, int(port))
    m.starttls(ssl_context=ctx)
try:
    m.login(user, pw)
except imaplib.IMAP4.error as e:
    print("LOGIN FAILED", e)
    sys.exit(3)
m.select("INBOX", readonly=True)
for uid in range(1, int(n) + 1):
    typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
    print(hashlib.sha256(data[0][1]).hexdigest())
m.logout()
`

func TestIMAPPassgatePython(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "python")
	var want strings.Builder
	for _, m := range d.Messages {
		fmt.Fprintf(&want, "%x\n", sha256.Sum256(m))
	}
	tests := []struct {
		name, mode, addr, password string
		wantExit                   int
	}{
		{"ok/starttls", "starttls", p.imapAddr, pw, 0},
		{"ok/implicit", "implicit", p.imapsAddr, pw, 0},
		{"fail/primary-password", "implicit", p.imapsAddr, d.Users["alice"], 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			host, port, _ := net.SplitHostPort(tc.addr)
			cmd := exec.CommandContext(ctx, "python3", "-c", pythonFetch, host, port, tc.mode,
				env.certs.CAFile, "alice", tc.password, strconv.Itoa(len(d.Messages)))
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("python3: %v", err)
			}
			if code != tc.wantExit {
				t.Fatalf("python3 exit %d, want %d:\n%s%s", code, tc.wantExit, stdout.String(), stderr.String())
			}
			if code == 0 && stdout.String() != want.String() {
				t.Errorf("imaplib fetched other bytes:\n%s\nwant\n%s", stdout.String(), want.String())
			}
			if code == 3 && !strings.Contains(stdout.String(), "AUTHENTICATIONFAILED") {
				t.Errorf("imaplib's failure does not carry [AUTHENTICATIONFAILED]: %s", stdout.String())
			}
		})
	}
}

// TestIMAPPassgateUsageAndAudit shows what an operator can prove after
// the fact: a success updates the app password's last use (time, client
// address, protocol and the client's name from a pre-login ID), every
// login is an audit event without the secret, and a primary-password
// login of an "enabled" user succeeds but is audited as "would be refused
// once enforced".
func TestIMAPPassgateUsageAndAudit(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "Outlook 2010")
	p.admin(t, "user", "add", "carol", "--mfa", "enabled")

	// OfflineIMAP and Wino Mail send ID before login.
	dl := &net.Dialer{Timeout: patience, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.55")}}
	conn, err := tls.DialWithDialer(dl, "tcp", p.imapsAddr, env.certs.ClientTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(conn)
	readTagged := func(tag string) string {
		t.Helper()
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %s: %v", tag, err)
			}
			if strings.HasPrefix(l, tag+" ") {
				return l
			}
		}
	}
	r.ReadString('\n') // greeting
	fmt.Fprintf(conn, "a ID (\"name\" \"Outlook\" \"version\" \"14.0\")\r\n")
	if l := readTagged("a"); !strings.HasPrefix(l, "a OK") {
		t.Fatalf("pre-login ID: %q", l)
	}
	fmt.Fprintf(conn, "b LOGIN alice %q\r\n", pw)
	if l := readTagged("b"); !strings.HasPrefix(l, "b OK") {
		t.Fatalf("LOGIN with app password: %q", l)
	}
	fmt.Fprintf(conn, "c LOGOUT\r\n")
	readTagged("c")

	var list []struct {
		Label          string `json:"label"`
		LastUsedAt     string `json:"last_used_at"`
		LastUsedAddr   string `json:"last_used_addr"`
		LastUsedProto  string `json:"last_used_proto"`
		LastUsedClient string `json:"last_used_client"`
	}
	// The login's writes are committed in the background within
	// milliseconds; the command line, another process, waits for them.
	var out string
	recorded := eventually(patience, func() bool {
		out = p.admin(t, "app-password", "list", "alice", "--json")
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
			t.Fatalf("app-password list --json: %v\n%s", err, out)
		}
		return list[0].LastUsedAt != ""
	})
	if u := list[0]; !recorded || !strings.HasPrefix(u.LastUsedAddr, "127.0.0.55:") || u.LastUsedProto != "imap" || !strings.Contains(u.LastUsedClient, "Outlook") {
		t.Errorf("last use not recorded: %+v", u)
	}

	// carol is "enabled": her primary password still works, audited.
	if got := p.rawLoginFrom(t, "127.0.0.56", "carol", d.Users["carol"]); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("enabled user's primary password: %q", got)
	}
	var events []struct {
		Actor, Action, Subject, Outcome, Detail string
	}
	var aliceOK, carolWarn bool
	eventually(patience, func() bool {
		out = p.admin(t, "audit", "--json")
		if err := json.Unmarshal([]byte(out), &events); err != nil {
			t.Fatalf("audit --json: %v\n%s", err, out)
		}
		for _, ev := range events {
			if ev.Action != "login" {
				continue
			}
			if ev.Subject == "alice" && ev.Outcome == "success" && strings.Contains(ev.Detail, "Outlook 2010") && strings.HasPrefix(ev.Actor, "imap:127.0.0.55:") {
				aliceOK = true
			}
			if ev.Subject == "carol" && ev.Outcome == "success" && strings.Contains(ev.Detail, "would be refused once enforced") {
				carolWarn = true
			}
		}
		return aliceOK && carolWarn
	})
	if !aliceOK || !carolWarn {
		t.Errorf("audit: alice's app-password login recorded %v, carol's 'would be refused once enforced' %v:\n%s", aliceOK, carolWarn, out)
	}
	compact := strings.ReplaceAll(pw, " ", "")
	if strings.Contains(out, compact) || strings.Contains(out, pw) || strings.Contains(out, d.Users["carol"]) {
		t.Error("a secret appears in the audit trail")
	}
	if s := p.out.String(); strings.Contains(s, compact) || strings.Contains(s, d.Users["carol"]) {
		t.Error("a secret appears in passgate's log")
	}
}

// TestIMAPPassgateTLS10 shows the legacy option for Outlook 2010 on
// Windows 7, whose Schannel speaks only TLS 1.0: with tls.min_version
// "1.0" such a client connects and logs in (and passgate warns at start);
// with the default, 1.2, its handshake is refused.
func TestIMAPPassgateTLS10(t *testing.T) {
	tls10 := func(p *passgateInstance) error {
		c := env.certs.ClientTLS()
		c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: patience}, "tcp", p.imapsAddr, c)
		if err != nil {
			return err
		}
		defer conn.Close()
		if v := conn.ConnectionState().Version; v != tls.VersionTLS10 {
			return fmt.Errorf("negotiated %s, want TLS 1.0", tls.VersionName(v))
		}
		conn.SetDeadline(time.Now().Add(patience))
		greeting, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil || !strings.HasPrefix(greeting, "* OK") {
			return fmt.Errorf("greeting %q: %v", greeting, err)
		}
		return nil
	}
	t.Run("default-refuses", func(t *testing.T) {
		p := startPassgate(t, passgateConfig{})
		if err := tls10(p); err == nil {
			t.Fatal("a TLS 1.0 client connected with the default tls.min_version 1.2")
		}
	})
	t.Run("legacy-allows", func(t *testing.T) {
		p := startPassgate(t, passgateConfig{tlsMin: "1.0"})
		if err := tls10(p); err != nil {
			t.Fatalf("TLS 1.0 client with tls.min_version 1.0: %v", err)
		}
		if !strings.Contains(p.out.String(), "tls.min_version allows TLS older than 1.2") {
			t.Errorf("no warning at start:\n%s", tail(p.out.String(), 20))
		}
	})
}
