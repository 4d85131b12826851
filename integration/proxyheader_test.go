package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// imapVia connects to addr from the local address from, with implicit
// TLS when useTLS, and returns the connection and its reader after the
// greeting.
func imapVia(t *testing.T, addr, from string, useTLS bool) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	d := &net.Dialer{Timeout: patience, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	var c net.Conn
	var err error
	if useTLS {
		c, err = tls.DialWithDialer(d, "tcp", addr, env.certs.ClientTLS())
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatalf("connect to %s from %s: %v", addr, from, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting via %s: %v", addr, err)
	}
	return c, r, greeting
}

func readTagged(t *testing.T, r *bufio.Reader, tag string) (untagged []string, tagged string) {
	t.Helper()
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for %s: %v", tag, err)
		}
		if strings.HasPrefix(l, tag+" ") {
			return untagged, l
		}
		untagged = append(untagged, l)
	}
}

// TestIMAPBehindHAProxy runs serve behind a real HAProxy in TCP mode that
// sends the PROXY protocol (v2 to the implicit-TLS listener, v1 to the
// STARTTLS one), with HAProxy's address in policy.proxy_networks:
//   - a client at 127.0.0.66 logs in through HAProxy with an app password,
//     and the audit trail, the app password's last use and Dovecot's log
//     all name 127.0.0.66, not HAProxy;
//   - a client at 127.0.0.67 without TLS through HAProxy is not trusted
//     (HAProxy is): LOGINDISABLED, and its LOGIN is refused;
//   - a client at 127.0.0.68 that sends its own PROXY header directly to
//     passgate forges nothing: the header is a bad command, the client
//     stays untrusted;
//   - a connection from HAProxy's address without a header is closed
//     before the greeting, and counted in the metrics.
func TestIMAPBehindHAProxy(t *testing.T) {
	d := env.dovecot
	p := startPassgate(t, passgateConfig{trusted: []string{"127.0.0.1/32"}, proxies: []string{"127.0.0.1/32"}, metrics: true})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "laptop")
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ha, err := testenv.StartHAProxy(ctx, t.TempDir(), []testenv.HAProxyRoute{
		{Name: "imaps", Backend: p.imapsAddr, Send: "send-proxy-v2"},
		{Name: "imap", Backend: p.imapAddr, Send: "send-proxy"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ha.Stop)

	t.Run("client-address-through-haproxy", func(t *testing.T) {
		c, r, greeting := imapVia(t, ha.Addrs["imaps"], "127.0.0.66", true)
		if !strings.HasPrefix(greeting, "* OK") {
			t.Fatalf("greeting through HAProxy: %q", greeting)
		}
		fmt.Fprintf(c, "a LOGIN alice %q\r\n", pw)
		if _, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("LOGIN through HAProxy: %q", got)
		}
		fmt.Fprintf(c, "b LOGOUT\r\n")
		readTagged(t, r, "b")
		waitLog(t, d, "rip=127.0.0.66")
		if !eventually(patience, func() bool {
			return strings.Contains(p.admin(t, "audit", "--user", "alice", "--json"), `"actor": "imap:127.0.0.66:`) ||
				strings.Contains(p.admin(t, "audit", "--user", "alice", "--json"), `"actor":"imap:127.0.0.66:`)
		}) {
			t.Errorf("the audit trail does not name the client 127.0.0.66:\n%s", p.admin(t, "audit", "--user", "alice"))
		}
		if list := p.admin(t, "app-password", "list", "alice", "--json"); !strings.Contains(list, "127.0.0.66:") {
			t.Errorf("last use does not name the client 127.0.0.66:\n%s", list)
		}
	})
	t.Run("trust-comes-from-the-client-not-haproxy", func(t *testing.T) {
		c, r, greeting := imapVia(t, ha.Addrs["imap"], "127.0.0.67", false)
		fmt.Fprintf(c, "a CAPABILITY\r\n")
		untagged, _ := readTagged(t, r, "a")
		caps := greeting + strings.Join(untagged, "")
		if !strings.Contains(caps, "LOGINDISABLED") {
			t.Fatalf("an untrusted client through a trusted HAProxy may log in without TLS: %q", caps)
		}
		fmt.Fprintf(c, "b LOGIN alice %q\r\n", pw)
		if _, got := readTagged(t, r, "b"); strings.HasPrefix(got, "b OK") {
			t.Fatalf("plaintext LOGIN through HAProxy accepted: %q", got)
		}
	})
	t.Run("forged-header-from-a-client", func(t *testing.T) {
		c, r, _ := imapVia(t, p.imapAddr, "127.0.0.68", false)
		fmt.Fprintf(c, "PROXY TCP4 127.0.0.1 127.0.0.1 40000 143\r\na CAPABILITY\r\n")
		untagged, got := readTagged(t, r, "a")
		if !strings.HasPrefix(got, "a OK") || !strings.Contains(strings.Join(untagged, ""), "LOGINDISABLED") {
			t.Fatalf("after a forged header the client is trusted: %q %q", untagged, got)
		}
	})
	t.Run("haproxy-address-without-header", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", p.imapAddr, patience)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(patience))
		fmt.Fprintf(c, "a CAPABILITY\r\n")
		if b, err := io.ReadAll(c); len(b) != 0 {
			t.Fatalf("a connection from a proxy address without a header got %q (%v), want it closed unanswered", b, err)
		}
		// Counted for alerting; the start-up probes, which send
		// nothing, are not.
		_, body := curlGet(t, "http://"+p.metrics+"/metrics")
		if v := metricValue(body, "passgate_proxy_header_refused_total", `listener="imap"`); v != 1 {
			t.Errorf("passgate_proxy_header_refused_total{listener=\"imap\"} = %v, want 1", v)
		}
	})
}

// TestIMAPPlaintextLoginIsAudited: a LOGIN sent without TLS from an
// untrusted address is refused with PRIVACYREQUIRED, and the audit trail
// records it with its reason: the password crossed the network in clear,
// and the operator should find the client that sent it.
func TestIMAPPlaintextLoginIsAudited(t *testing.T) {
	p := startPassgate(t, passgateConfig{})
	c, r, _ := imapVia(t, p.imapAddr, "127.0.0.71", false)
	fmt.Fprintf(c, "a LOGIN carol hunter2\r\n")
	if _, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a NO [PRIVACYREQUIRED]") {
		t.Fatalf("plaintext LOGIN: %q", got)
	}
	var out string
	if !eventually(patience, func() bool {
		out = p.admin(t, "audit", "--user", "carol")
		return strings.Contains(out, "plaintext credentials without TLS") && strings.Contains(out, "imap:127.0.0.71:")
	}) {
		t.Fatalf("the refused plaintext LOGIN is not in the audit trail:\n%s", out)
	}
	if strings.Contains(out, "hunter2") {
		t.Fatal("the password is in the audit trail")
	}
}
