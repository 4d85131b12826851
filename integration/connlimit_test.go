package integration

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// greeted dials passgate's IMAP listener from laddr and reads its first
// line.
func greeted(t *testing.T, addr, laddr string) (net.Conn, string) {
	t.Helper()
	d := &net.Dialer{Timeout: patience, LocalAddr: &net.TCPAddr{IP: net.ParseIP(laddr)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial from %s: %v", laddr, err)
	}
	line, err := bufio.NewReaderSize(c, 256).ReadString('\n')
	if err != nil && err != io.EOF {
		t.Fatalf("greeting: %v", err)
	}
	return c, line
}

// TestConnectionLimitsIdleFlood: 5 000 idle connections before login
// from one address (127.0.0.1), all held (caps raised above them), while
// another address (127.0.0.2) still logs in; and the memory they take.
func TestConnectionLimitsIdleFlood(t *testing.T) {
	const n = 5000
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < 3*n && rl.Max >= 3*n {
		old := rl
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	}
	if rl.Cur < 2*n+100 {
		t.Fatalf("RLIMIT_NOFILE is %d: %d connections need %d descriptors (both ends live in this process)", rl.Cur, n, 2*n+100)
	}
	p := startPassgate(t, passgateConfig{policyYAML: "  limits:\n    max_connections_per_address: 6000\n    max_pre_login_connections: 6000\n"})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	rss0, err := rssKiB(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	g0 := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, line := greeted(t, p.imapAddr, "127.0.0.1")
		if !strings.HasPrefix(line, "* OK") {
			t.Fatalf("connection %d: greeting %q", i, line)
		}
		conns = append(conns, c)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	rss1, err := rssKiB(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	g1 := runtime.NumGoroutine()
	heap := int64(after.HeapInuse+after.StackInuse) - int64(before.HeapInuse+before.StackInuse)
	t.Logf("%d idle connections before login (client and server ends in this process): heap+stacks +%d KiB (%.1f KiB each), RSS +%d KiB (%.1f KiB each), goroutines +%d",
		n, heap/1024, float64(heap)/1024/n, rss1-rss0, float64(rss1-rss0)/n, g1-g0)

	if got := p.rawLoginFrom(t, "127.0.0.2", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("a login from another address during the flood: %q", got)
	}
}

// TestConnectionLimitsRefuse: over the per-address cap, the IMAP client
// reads "* BYE" and the metric counts it; another address is not
// affected; a login frees its connection's place.
func TestConnectionLimitsRefuse(t *testing.T) {
	// Trusted: the held connection may log in without STARTTLS.
	p := startPassgate(t, passgateConfig{metrics: true, trusted: []string{"127.0.0.0/8"}, policyYAML: "  limits:\n    max_connections_per_address: 3\n    max_pre_login_connections: 100\n"})
	p.enforce(t, "alice")
	pw := p.appPassword(t, "alice", "phone")
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 3 {
		c, line := greeted(t, p.imapAddr, "127.0.0.81")
		if !strings.HasPrefix(line, "* OK") {
			t.Fatalf("within the cap: %q", line)
		}
		held = append(held, c)
	}
	c, line := greeted(t, p.imapAddr, "127.0.0.81")
	c.Close()
	if line != "* BYE Too many connections, try again later\r\n" {
		t.Fatalf("over the cap: %q, want the polite BYE", line)
	}
	if got := p.rawLoginFrom(t, "127.0.0.82", "alice", pw); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("another address: %q", got)
	}
	// A held connection logs in: its place is free for another.
	held[0].Write([]byte("a LOGIN alice " + strconv.Quote(pw) + "\r\n"))
	r := bufio.NewReader(held[0])
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("LOGIN on a held connection: %v", err)
		}
		if strings.HasPrefix(l, "a ") {
			if !strings.HasPrefix(l, "a OK") {
				t.Fatalf("LOGIN on a held connection: %q", l)
			}
			break
		}
	}
	c2, line := greeted(t, p.imapAddr, "127.0.0.81")
	c2.Close()
	if !strings.HasPrefix(line, "* OK") {
		t.Fatalf("after one of the three logged in: %q", line)
	}
	resp, err := http.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `passgate_connections_refused_total{listener="imap",reason="per_address"} 1`; !strings.Contains(string(body), want) {
		t.Fatalf("metrics lack %s", want)
	}
}
