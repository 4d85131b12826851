package integration

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/integration/testenv"
)

// nginxRoute is one listener of the nginx mail proxy: a protocol ("imap"
// or "smtp") and the plaintext backend that logins there go to.
type nginxRoute struct {
	protocol, upstream string
}

// nginxMail is a throwaway nginx mail proxy: one listener per route
// (STARTTLS required on the client side, with the test certificates,
// TLS session tickets off), its backends in plaintext, and an auth_http
// server in this process that accepts user with password and sends each
// login to its route's backend.
type nginxMail struct {
	addrs []string // the listeners, in the order of the routes
	pid   int
}

// startNginxMail starts nginx as a mail proxy in a temporary directory
// (its own configuration, pid file and error log; one process, no master,
// so that its CPU time is that of one PID) and stops it, by its PID, when
// tb ends. A missing nginx or mail module fails tb.
func startNginxMail(tb testing.TB, user, password string, routes []nginxRoute) *nginxMail {
	tb.Helper()
	const module = "/usr/lib/nginx/modules/ngx_mail_module.so"
	for _, f := range []string{"/usr/sbin/nginx", module} {
		if _, err := os.Stat(f); err != nil {
			tb.Fatalf("nginx's mail proxy is not installed (Debian packages nginx-core and libnginx-mod-mail; go run ./integration/runtests installs them): %v", err)
		}
	}
	auth := startNginxAuth(tb, user, password)
	dir := tb.TempDir()
	var servers strings.Builder
	n := &nginxMail{}
	for _, r := range routes {
		port, err := testenv.FreePort()
		if err != nil {
			tb.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		n.addrs = append(n.addrs, addr)
		fmt.Fprintf(&servers, "    server {\n        listen %s;\n        protocol %s;\n        auth_http_header X-Passgate-Upstream %s;\n", addr, r.protocol, r.upstream)
		switch r.protocol {
		case "imap":
			servers.WriteString("        imap_auth plain login;\n")
		case "smtp":
			// XCLIENT (on by default) tells Postfix the login, as
			// passgate's xclient upstream login does.
			servers.WriteString("        smtp_auth plain login;\n        xclient on;\n")
		default:
			tb.Fatalf("nginx route: unknown protocol %q", r.protocol)
		}
		servers.WriteString("    }\n")
	}
	conf := fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
worker_processes 1;
pid %s;
error_log %s warn;
events {
    worker_connections 1024;
}
mail {
    server_name mail.example.test;
    auth_http %s/auth;
    proxy_pass_error_message on;
    starttls only;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;
    # ssl_session_tickets off alone gives two stateful TLS 1.3 tickets
    # (OpenSSL's NO_TICKET); NumTickets 0 sends none.
    ssl_session_tickets off;
    ssl_session_cache off;
    ssl_conf_command NumTickets 0;
%s}
`, module, filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"), auth, env.certs.CertFile, env.certs.KeyFile, servers.String())
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/nginx", "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start nginx: %v", err)
	}
	n.pid = cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = syscall.Kill(n.pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(patience):
			_ = syscall.Kill(n.pid, syscall.SIGKILL)
			<-exited
		}
	})
	errLog := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return out.String() + string(b)
	}
	for _, a := range n.addrs {
		for deadline := time.Now().Add(patience); !dialable(a); time.Sleep(20 * time.Millisecond) {
			select {
			case err := <-exited:
				exited <- err
				tb.Fatalf("nginx exited (%v):\n%s", err, tail(errLog(), 3000))
			default:
			}
			if time.Now().After(deadline) {
				tb.Fatalf("nginx does not listen on %s after %v:\n%s", a, patience, tail(errLog(), 3000))
			}
		}
	}
	return n
}

// startNginxAuth serves nginx's auth_http protocol on loopback until tb
// ends: user with password is sent to the backend that the listener names
// in X-Passgate-Upstream; anything else is refused as nginx expects
// (Auth-Status with a message, Auth-Wait). It returns the server's
// address.
func startNginxAuth(tb testing.TB, user, password string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, port, err := net.SplitHostPort(r.Header.Get("X-Passgate-Upstream"))
		okUser := subtle.ConstantTimeCompare([]byte(r.Header.Get("Auth-User")), []byte(user))
		okPass := subtle.ConstantTimeCompare([]byte(r.Header.Get("Auth-Pass")), []byte(password))
		if err != nil || okUser&okPass != 1 {
			w.Header().Set("Auth-Status", "Invalid login or password")
			w.Header().Set("Auth-Wait", "1")
			return
		}
		w.Header().Set("Auth-Status", "OK")
		w.Header().Set("Auth-Server", host)
		w.Header().Set("Auth-Port", port)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: patience}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	tb.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			tb.Errorf("nginx auth_http server: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// TestNginxMailProxy checks the nginx column of the benchmarks: through
// nginx, alice logs in to Dovecot over IMAP and submits a message that
// reaches dave's INBOX by Postfix (XCLIENT login), and a wrong password is
// refused.
func TestNginxMailProxy(t *testing.T) {
	e := smtpEnv(t)
	plain := postfixService(t, e, "smtpd_tls_security_level=none", "smtpd_tls_auth_only=no")
	pw := e.dovecot.Users["alice"]
	n := startNginxMail(t, "alice", pw, []nginxRoute{{"imap", e.dovecot.IMAPAddr}, {"smtp", plain}})

	s := benchSession{n.addrs[0], "alice", pw}
	c, err := s.login()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT through nginx: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT through nginx: %v", err)
	}
	c.Close()
	if _, err := (benchSession{n.addrs[0], "alice", pw + "x"}).login(); err == nil {
		t.Fatal("nginx let a wrong password log in")
	}

	// Tickets off, as the benchmarks' column says: a full handshake at
	// every login, and no ticket after it.
	cache := &ticketCounter{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	cfg := e.certs.ClientTLS()
	cfg.ClientSessionCache = cache
	sc, err := smtp.DialStartTLS(n.addrs[1], cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Noop(); err != nil {
		t.Fatal(err)
	}
	_ = sc.Quit()
	if got := cache.n.Load(); got != 0 {
		t.Errorf("nginx sent %d TLS session tickets, want none", got)
	}

	subject := fmt.Sprintf("through nginx %d", time.Now().UnixNano())
	msg := testMessage("alice@example.test", "dave@example.test", subject, 100)
	if _, err := smtpWholeSession(n.addrs[1], "alice", pw, msg, false); err != nil {
		t.Fatalf("SMTP through nginx: %v\npostfix log:\n%s", err, tail(e.postfix.Log(), 3000))
	}
	waitMailbox(t, e, "dave", subject)
}
