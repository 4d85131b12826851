package integration

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/passgate/passgate/backends/dial"
	"github.com/passgate/passgate/backends/smtpupstream"
	"github.com/passgate/passgate/integration/testenv"
)

// smtpBenchSession opens a logged-in submission session through passgate
// (alice's app password, XCLIENT upstream).
func smtpBenchSession(tb testing.TB, p *passgateSMTP) (*smtp.Client, string) {
	tb.Helper()
	return submitColumn{"passgate", p.Addr, "alice", p.Secrets.aliceApp}.dial(tb)
}

// sendOne submits one message of body from r to dave.
func sendOne(tb testing.TB, c *smtp.Client, from string, r io.Reader) {
	if err := c.Mail(from, nil); err != nil {
		tb.Fatal(err)
	}
	if err := c.Rcpt("dave@example.test", nil); err != nil {
		tb.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(w, r); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
}

// submitColumn is one column of BenchmarkSMTPSubmit: where a client
// submits, as whom.
type submitColumn struct {
	name, addr, user, pw string
}

// dial opens a logged-in submission session (STARTTLS, AUTH PLAIN).
func (sc submitColumn) dial(tb testing.TB) (*smtp.Client, string) {
	tb.Helper()
	c, err := smtp.DialStartTLS(sc.addr, env.certs.ClientTLS())
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", sc.user, sc.pw)); err != nil {
		tb.Fatal(err)
	}
	return c, sc.user + "@example.test"
}

// BenchmarkSMTPSubmit sends messages on one logged-in session, directly to
// Postfix, through nginx's mail proxy (upstream plaintext) and through
// passgate with upstream STARTTLS and plaintext, to the same Postfix, side
// by side. Reported: msgs/s and MB/s (from SetBytes).
func BenchmarkSMTPSubmit(b *testing.B) {
	e := smtpEnv(b)
	plain := postfixService(b, e, "smtpd_tls_security_level=none", "smtpd_tls_auth_only=no")
	p := startPassgateSMTP(b, smtpOpts{upstream: xclientUpstream(e)})
	pp := startPassgateSMTP(b, smtpOpts{upstream: smtpupstream.Options{
		Addresses:     []string{plain},
		TLS:           smtpupstream.TLSNone,
		Login:         smtpupstream.LoginXClient,
		ForwardClient: smtpupstream.ForwardXClient,
	}})
	alicePw := e.dovecot.Users["alice"]
	ng := startNginxMail(b, "alice", alicePw, []nginxRoute{{"smtp", plain}})
	columns := []submitColumn{
		{"direct", e.postfix.SubmissionAddr, "dave", e.dovecot.Users["dave"]},
		{"nginx-upstream-plaintext", ng.addrs[0], "alice", alicePw},
		{"passgate-upstream-STARTTLS", p.Addr, "alice", p.Secrets.aliceApp},
		{"passgate-upstream-plaintext", pp.Addr, "alice", pp.Secrets.aliceApp},
	}
	for _, size := range []int{2 << 10, 1 << 20, 10 << 20} {
		msg := testMessage("x@example.test", "dave@example.test", "bench", size)
		for _, col := range columns {
			b.Run(fmt.Sprintf("size=%dKiB/%s", size>>10, col.name), func(b *testing.B) {
				c, from := col.dial(b)
				defer c.Close()
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					sendOne(b, c, from, bytes.NewReader(msg))
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
				b.StopTimer()
				_ = c.Quit()
			})
		}
	}
}

// relayPeak relays one message of size bytes through passgate and returns
// the peak growth of the process's in-use heap while it streamed, the
// growth of the memory obtained from the OS, and the time it took.
func relayPeak(tb testing.TB, size int64) (heapPeak, sysGrowth uint64, took time.Duration) {
	e := smtpEnv(tb)
	p := startPassgateSMTP(tb, smtpOpts{upstream: xclientUpstream(e)})
	c, from := smtpBenchSession(tb, p)
	defer c.Close()
	header := []byte("From: <alice@example.test>\r\nTo: <dave@example.test>\r\nSubject: relay 50MB\r\n\r\n")
	body := &genReader{n: size - size%78}

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()
	start := time.Now()
	sendOne(tb, c, from, io.MultiReader(bytes.NewReader(header), body))
	took = time.Since(start)
	close(stop)
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	_ = c.Quit()
	if pk := peak.Load(); pk > base.HeapInuse {
		heapPeak = pk - base.HeapInuse
	}
	if after.Sys > base.Sys {
		sysGrowth = after.Sys - base.Sys
	}
	return heapPeak, sysGrowth, took
}

// TestSMTPRelay50MBMemory relays a 50 MB message through passgate to
// Postfix and checks that the message is streamed: the heap grows by less
// than 16 MiB while it passes.
func TestSMTPRelay50MBMemory(t *testing.T) {
	const size = 50 << 20
	heap, sys, took := relayPeak(t, size)
	t.Logf("50 MiB relayed in %v (%.0f MB/s); peak heap growth %.2f MiB, Sys growth %.2f MiB",
		took, float64(size)/took.Seconds()/1e6, float64(heap)/(1<<20), float64(sys)/(1<<20))
	if heap >= 16<<20 {
		t.Fatalf("peak heap growth %.2f MiB while relaying 50 MiB: the message is not streamed", float64(heap)/(1<<20))
	}
}

// BenchmarkSMTPRelay50MB reports the same as TestSMTPRelay50MBMemory as
// benchmark metrics.
func BenchmarkSMTPRelay50MB(b *testing.B) {
	const size = 50 << 20
	b.SetBytes(size)
	var maxHeap uint64
	for i := 0; i < b.N; i++ {
		heap, _, _ := relayPeak(b, size)
		maxHeap = max(maxHeap, heap)
	}
	b.ReportMetric(float64(maxHeap)/(1<<20), "peak-heap-MiB")
}

// postfixServices is test-only state: the extra smtpd services added to
// the shared Postfix, by their -o options.
var postfixServices struct {
	mu    sync.Mutex
	addrs map[string]string
}

// postfixService adds (once per set of options) an smtpd service on a
// free loopback port to the shared test Postfix, with the -o options opts
// (e.g. "smtpd_tls_security_level=none"), reloads Postfix and returns the
// service's address once it accepts connections.
func postfixService(tb testing.TB, e *smtpServers, opts ...string) string {
	tb.Helper()
	postfixServices.mu.Lock()
	defer postfixServices.mu.Unlock()
	key := strings.Join(opts, " ")
	if a, ok := postfixServices.addrs[key]; ok {
		return a
	}
	port, err := testenv.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	entry := addr + " inet n - n - - smtpd"
	for _, o := range opts {
		entry += " -o " + o
	}
	etc := filepath.Join(e.postfix.Dir, "etc")
	for _, args := range [][]string{{"postconf", "-c", etc, "-M", "-e", addr + "/inet=" + entry}, {"postfix", "-c", etc, "reload"}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for deadline := time.Now().Add(patience); !dialable(addr); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("the Postfix service %q does not listen after %v:\n%s", entry, patience, tail(e.postfix.Log(), 2000))
		}
	}
	if postfixServices.addrs == nil {
		postfixServices.addrs = map[string]string{}
	}
	postfixServices.addrs[key] = addr
	return addr
}

// postfixOpenSSLConf writes (once) an OpenSSL configuration that sets
// NumTickets = 0 for the application name "postfix", as
// configs/postfix-xclient.cf shows, and returns its path.
func postfixOpenSSLConf(tb testing.TB, e *smtpServers) string {
	tb.Helper()
	path := filepath.Join(e.postfix.Dir, "etc", "openssl-notickets.cnf")
	conf := "postfix = postfix_settings\n[postfix_settings]\nssl_conf = postfix_ssl\n[postfix_ssl]\nsystem_default = postfix_tls\n[postfix_tls]\nNumTickets = 0\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// postfixNoTickets is a STARTTLS submission service of the test Postfix
// configured as configs/postfix-xclient.cf says to stop TLS 1.3 session
// tickets.
func postfixNoTickets(tb testing.TB, e *smtpServers) string {
	tb.Helper()
	return postfixService(tb, e, "smtpd_tls_security_level=encrypt", "tls_ssl_options=NO_TICKET",
		"tls_config_file="+postfixOpenSSLConf(tb, e), "tls_config_name=postfix")
}

// smtpProcess is a "passgate serve" process with an SMTP listener, and
// alice's app password there.
type smtpProcess struct {
	addr, password string
	pid            int
}

// startSMTPProcess runs bin as "passgate serve" with an SMTP listener in
// front of the Postfix service at upstream (tls "starttls" or "none"),
// XCLIENT login, and returns once it listens. With bin empty, serve runs
// in this process (pid 0).
func startSMTPProcess(tb testing.TB, bin, upstream, upstreamTLS string) smtpProcess {
	tb.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startPassgate(tb, passgateConfig{binary: bin, extraYAML: fmt.Sprintf(`smtp:
  listen: %s
  upstream:
    addresses: [%q]
    tls: %s
    ca_file: %q
    login: xclient
    forward_client: xclient
`, addr, upstream, upstreamTLS, env.certs.CAFile)})
	for deadline := time.Now().Add(patience); !dialable(addr); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("passgate does not listen for SMTP on %s:\n%s", addr, tail(p.out.String(), 3000))
		}
	}
	p.enforce(tb, "alice")
	sp := smtpProcess{addr: addr, password: p.appPassword(tb, "alice", "bench")}
	if p.proc != nil {
		sp.pid = p.proc.Process.Pid
	}
	return sp
}

// smtpWholeSession is what a mail client does to send one message: connect,
// STARTTLS with a full TLS 1.3 handshake (no resumption), AUTH PLAIN,
// MAIL, RCPT, DATA with msg, QUIT. It returns how long that took.
// With quickAck the client acknowledges what it reads at once
// (dial.QuickAck before each read), as passgate does on its upstream leg.
func smtpWholeSession(addr, user, pw string, msg []byte, quickAck bool) (time.Duration, error) {
	start := time.Now()
	conn, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		return 0, err
	}
	if quickAck {
		conn = quickAckConn{conn}
	}
	c, err := smtp.NewClientStartTLS(conn, env.certs.ClientTLS())
	if err != nil {
		conn.Close()
		return 0, err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pw)); err != nil {
		return 0, fmt.Errorf("AUTH: %w", err)
	}
	if err := c.SendMail(user+"@example.test", []string{"dave@example.test"}, bytes.NewReader(msg)); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := c.Quit(); err != nil {
		return 0, fmt.Errorf("QUIT: %w", err)
	}
	return time.Since(start), nil
}

// quickAckConn sets TCP_QUICKACK before each read.
type quickAckConn struct{ net.Conn }

func (c quickAckConn) Read(p []byte) (int, error) {
	dial.QuickAck(c.Conn)
	return c.Conn.Read(p)
}

// smtpSessionRow is one column of BenchmarkSMTPSession.
type smtpSessionRow struct {
	name, addr, user, pw string
	pid                  int  // the proxy's process; 0 for Postfix directly
	quickAck             bool // the client acknowledges at once (direct only)
	took                 []time.Duration
	cpu                  time.Duration // the proxy's, summed over its sessions
}

// BenchmarkSMTPSession measures what a mail client meets when it sends a
// 2 KB message on a new connection (smtpWholeSession), directly to
// Postfix, through nginx's mail proxy (startNginxMail, upstream
// plaintext with XCLIENT) and through passgate, whose upstream leg is
// STARTTLS or plaintext. passgate runs as its own "passgate serve" process (the
// binary built from this tree), so that its CPU time per message is read
// from /proc, as nginx's is, before and after each of its sessions (what it does while
// the other columns run is not counted). Each iteration runs one session of every column, in an order
// that turns, so that all see the same load; run it with
// -benchtime 200x. PASSGATE_BENCH_SMTP_SIZE sets the message's size in
// bytes (2048 by default), for the CPU per message of large messages.
// With PASSGATE_BENCH_BASELINE set to another passgate
// binary (an older build), that binary gets the same two columns. With
// PASSGATE_BENCH_INPROCESS=1 passgate runs inside the test binary, for
// -cpuprofile (then without CPU per message); PASSGATE_BENCH_BINARY
// names another binary for the passgate columns (for a packet trace of
// one binary's upstream connections alone).
//
// passgate resumes its upstream TLS sessions with the ticket Postfix
// sends after a full handshake, and Postfix sends no new one after a
// resumed handshake, so the ticket's delayed ACK is met after a full
// handshake only. The columns "no resumption" use a Postfix service with
// smtpd_tls_session_cache_timeout = 0, which still sends a ticket but
// resumes no session: every login there has a full handshake followed by
// a ticket. The columns "tickets off" use a service that sends none
// (postfixNoTickets, TestSMTPPostfixTicketsOff): nothing for a delayed
// ACK to hold up, and no resumption either.
func BenchmarkSMTPSession(b *testing.B) {
	e := smtpEnv(b)
	bin := ""
	switch {
	case os.Getenv("PASSGATE_BENCH_BINARY") != "":
		bin = os.Getenv("PASSGATE_BENCH_BINARY")
	case os.Getenv("PASSGATE_BENCH_INPROCESS") == "":
		bin = passgateBinary(b)
	}
	plain := postfixService(b, e, "smtpd_tls_security_level=none", "smtpd_tls_auth_only=no")
	noTickets := postfixNoTickets(b, e)
	// Tickets, but none that resumes a session: every handshake is full
	// and followed by a ticket, as the first login after a start is.
	noResume := postfixService(b, e, "smtpd_tls_security_level=encrypt", "smtpd_tls_session_cache_timeout=0")
	size := 2 << 10
	if v := os.Getenv("PASSGATE_BENCH_SMTP_SIZE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("PASSGATE_BENCH_SMTP_SIZE=%q: want a size in bytes", v)
		}
		size = n
	}
	msg := testMessage("x@example.test", "dave@example.test", "bench", size)
	rows := []*smtpSessionRow{
		{name: "direct", addr: e.postfix.SubmissionAddr, user: "dave", pw: e.dovecot.Users["dave"]},
		{name: "direct, client with quick ACK", addr: e.postfix.SubmissionAddr, user: "dave", pw: e.dovecot.Users["dave"], quickAck: true},
		{name: "direct, tickets off", addr: noTickets, user: "dave", pw: e.dovecot.Users["dave"]},
	}
	add := func(name, bin, upstream, upTLS string) {
		p := startSMTPProcess(b, bin, upstream, upTLS)
		rows = append(rows, &smtpSessionRow{name: name, addr: p.addr, user: "alice", pw: p.password, pid: p.pid})
	}
	// nginx's mail proxy in front of the plaintext service (nginx has no
	// TLS to a mail backend), logging in with XCLIENT as passgate does;
	// its auth_http server runs in this process and is not counted.
	ng := startNginxMail(b, "alice", e.dovecot.Users["alice"], []nginxRoute{{"smtp", plain}})
	rows = append(rows, &smtpSessionRow{name: "nginx, upstream plaintext", addr: ng.addrs[0], user: "alice", pw: e.dovecot.Users["alice"], pid: ng.pid})
	add("passgate, upstream STARTTLS", bin, e.postfix.SubmissionAddr, "starttls")
	add("passgate, upstream plaintext", bin, plain, "none")
	add("passgate, upstream STARTTLS, tickets off", bin, noTickets, "starttls")
	add("passgate, upstream STARTTLS, no resumption", bin, noResume, "starttls")
	if base := os.Getenv("PASSGATE_BENCH_BASELINE"); base != "" {
		add("baseline, upstream STARTTLS", base, e.postfix.SubmissionAddr, "starttls")
		add("baseline, upstream plaintext", base, plain, "none")
		add("baseline, upstream STARTTLS, no resumption", base, noResume, "starttls")
	}
	// Warm up each column (first handshakes, code paths, Postfix's
	// processes) before measuring.
	for _, r := range rows {
		for range 3 {
			if _, err := smtpWholeSession(r.addr, r.user, r.pw, msg, r.quickAck); err != nil {
				b.Fatalf("%s: %v", r.name, err)
			}
		}
	}
	hz := clockTicks()
	load0 := loadAvg()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range rows {
			r := rows[(i+k)%len(rows)]
			var cpu0 time.Duration
			if r.pid != 0 {
				cpu0 = cpuOfProcess(b, r.pid, hz)
			}
			d, err := smtpWholeSession(r.addr, r.user, r.pw, msg, r.quickAck)
			if err != nil {
				b.Fatalf("%s: session %d: %v", r.name, i, err)
			}
			r.took = append(r.took, d)
			if r.pid != 0 {
				r.cpu += cpuOfProcess(b, r.pid, hz) - cpu0
			}
		}
	}
	b.StopTimer()
	direct := statsOf(rows[0].took).p50
	var nginx time.Duration
	for _, r := range rows {
		if strings.HasPrefix(r.name, "nginx") {
			nginx = statsOf(r.took).p50
		}
	}
	var out strings.Builder
	fmt.Fprintf(&out, "SMTP %d KiB session (connect, STARTTLS, AUTH, MAIL/RCPT/DATA, QUIT), %d each; load %s before, %s after\n", size>>10, b.N, load0, loadAvg())
	fmt.Fprintf(&out, "Postfix: submission %s, plaintext %s, tickets off %s, no resumption %s\n", e.postfix.SubmissionAddr, plain, noTickets, noResume)
	fmt.Fprintf(&out, "| column | median ms | p10 | p90 | × direct | × nginx | proxy CPU µs/message |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		s := statsOf(r.took)
		cpu := "—"
		if r.pid != 0 {
			per := r.cpu / time.Duration(b.N)
			cpu = fmt.Sprintf("%d", per.Microseconds())
			b.ReportMetric(float64(per.Microseconds()), metricName(r.name)+"-cpu-us/msg")
		}
		fmt.Fprintf(&out, "| %s | %s | %s | %s | %.2f | %.2f | %s |\n", r.name, msText(s.p50), msText(s.p10), msText(s.p90), float64(s.p50)/float64(direct), float64(s.p50)/float64(nginx), cpu)
		b.ReportMetric(float64(s.p50)/1e6, metricName(r.name)+"-ms")
	}
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Print(out.String())
}

// metricName makes a column's name a benchmark metric's unit.
func metricName(s string) string {
	return strings.NewReplacer(", ", "/", " ", "-").Replace(s)
}

// ticketCounter is a TLS client session cache that counts the session
// tickets the server sent.
type ticketCounter struct {
	tls.ClientSessionCache
	n atomic.Int32
}

func (t *ticketCounter) Put(key string, cs *tls.ClientSessionState) {
	t.n.Add(1)
	t.ClientSessionCache.Put(key, cs)
}

// TestSMTPPostfixTicketsOff checks what configs/postfix-xclient.cf says:
// Postfix 3.7 sends a TLS 1.3 session ticket after STARTTLS by default;
// smtpd_tls_session_cache_timeout = 0 or tls_ssl_options = NO_TICKET alone
// do not stop them (NO_TICKET only turns OpenSSL's stateless tickets
// into stateful ones, two of them); NO_TICKET together with OpenSSL's
// NumTickets = 0 in tls_config_file does.
func TestSMTPPostfixTicketsOff(t *testing.T) {
	e := smtpEnv(t)
	encrypt := "smtpd_tls_security_level=encrypt"
	tests := []struct {
		name    string
		addr    string
		tickets bool
	}{
		{"default", e.postfix.SubmissionAddr, true},
		{"session_cache_timeout=0", postfixService(t, e, encrypt, "smtpd_tls_session_cache_timeout=0"), true},
		{"NO_TICKET", postfixService(t, e, encrypt, "tls_ssl_options=NO_TICKET"), true},
		{"NumTickets=0", postfixService(t, e, encrypt, "tls_config_file="+postfixOpenSSLConf(t, e), "tls_config_name=postfix"), true},
		{"NO_TICKET+NumTickets=0", postfixNoTickets(t, e), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cache := &ticketCounter{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			cfg := e.certs.ClientTLS()
			cfg.ClientSessionCache = cache
			c, err := smtp.DialStartTLS(tc.addr, cfg)
			if err != nil {
				t.Fatal(err)
			}
			// NOOP after EHLO: the tickets precede the EHLO reply and are
			// read with it.
			if err := c.Noop(); err != nil {
				t.Fatal(err)
			}
			_ = c.Quit()
			t.Logf("%s: %d tickets", tc.name, cache.n.Load())
			if got := cache.n.Load(); (got > 0) != tc.tickets {
				t.Fatalf("%d session tickets received, want tickets: %v", got, tc.tickets)
			}
		})
	}
}
