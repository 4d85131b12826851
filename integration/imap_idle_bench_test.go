package integration

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// idleSessions is how many IDLE sessions the memory benchmark holds open.
const idleSessions = 200

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// idleSession logs in over implicit TLS, selects INBOX and enters IDLE,
// the state a phone or Outlook keeps for hours.
func idleSession(addr, user, pw string) (net.Conn, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, env.certs.ClientTLS())
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	expect := func(prefix string) error {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if strings.HasPrefix(l, prefix) {
				if !strings.HasPrefix(l[len(prefix):], "OK") && prefix != "+" {
					return fmt.Errorf("%q", l)
				}
				return nil
			}
		}
	}
	if _, err := r.ReadString('\n'); err != nil {
		conn.Close()
		return nil, err
	}
	fmt.Fprintf(conn, "a LOGIN %s %s\r\n", strconv.Quote(user), strconv.Quote(pw))
	if err := expect("a "); err != nil {
		conn.Close()
		return nil, fmt.Errorf("login: %w", err)
	}
	fmt.Fprintf(conn, "b SELECT INBOX\r\n")
	if err := expect("b "); err != nil {
		conn.Close()
		return nil, fmt.Errorf("select: %w", err)
	}
	fmt.Fprintf(conn, "c IDLE\r\n")
	if err := expect("+"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("idle: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// BenchmarkIMAPIdleSessionMemory measures passgate's memory per idle IMAP
// session: passgate runs as its own process (the built binary, as in
// production), idleSessions clients log in with an app password over
// implicit TLS and sit in IDLE, and the growth of passgate's resident set
// is divided by their number. design.md's figures for comparison: Dovecot
// as a proxy 83 KiB, nginx 23 KiB per idle session.
func BenchmarkIMAPIdleSessionMemory(b *testing.B) {
	for _, upTLS := range []string{"none", "starttls"} {
		b.Run("upstream-tls="+upTLS, func(b *testing.B) { benchIdleMemory(b, upTLS) })
	}
}

func benchIdleMemory(b *testing.B, upstreamTLS string) {
	bin := passgateBinary(b)
	p := startPassgate(b, passgateConfig{upstreamTLS: upstreamTLS})
	p.enforce(b, "alice")
	pw := p.appPassword(b, "alice", "idle")
	// Hand the ports over from the in-process instance to the binary.
	p.cancel()
	<-p.done
	p.done <- 0
	cmd := exec.Command(bin, "serve", "--config", p.config)
	// PASSGATE_BENCH_GOGC=10 shows how much of the figure is garbage not
	// yet collected rather than live memory.
	if v := os.Getenv("PASSGATE_BENCH_GOGC"); v != "" {
		cmd.Env = append(os.Environ(), "GOGC="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	for deadline := time.Now().Add(10 * time.Second); !dialable(p.imapsAddr); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("passgate binary does not listen")
		}
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(n int) {
		for i := 0; i < n; i++ {
			c, err := idleSession(p.imapsAddr, "alice", pw)
			if err != nil {
				b.Fatalf("session %d: %v", len(conns), err)
			}
			conns = append(conns, c)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		open(10) // warm up: code pages, pools, first TLS handshakes
		time.Sleep(200 * time.Millisecond)
		before, err := rssKiB(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		open(idleSessions)
		time.Sleep(500 * time.Millisecond)
		after, err := rssKiB(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(after-before)/idleSessions, "KiB/session")
		b.ReportMetric(float64(after), "KiB-rss-total")
		for _, c := range conns {
			c.Close()
		}
		conns = conns[:0]
	}
}
