package integration

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// Relay benchmark: many small IMAP commands on a logged-in session,
// directly to Dovecot and through passgate (its own "passgate serve"
// process, upstream plaintext with the master user), side by side in one
// run:
//
//	go test -run '^$' -bench IMAPRelay -benchtime 10x ./integration/
//
// With PASSGATE_BENCH_INPROCESS=1 passgate runs inside the test binary
// instead, so that -cpuprofile profiles it (with the client beside it:
// focus the profile on passgate's packages).

// relayBenchMailbox holds relayBenchMessages small messages of alice's at
// the shared Dovecot, for UID FETCH of their flags.
const (
	relayBenchMailbox  = "RelayBench"
	relayBenchMessages = 20
	relayBenchChunk    = 500 // commands per target and round
	relayBenchWindow   = 50  // commands in flight when pipelined
)

// relayClient is a minimal IMAP client: it sends tagged commands and reads
// until their tagged replies, so that the client costs little beside
// what it measures.
type relayClient struct {
	conn net.Conn
	r    *bufio.Reader
	n    int
	buf  []byte
}

// dialRelayClient connects to addr, runs STARTTLS (a full handshake), LOGIN
// and SELECT of mailbox.
func dialRelayClient(addr, user, pw, mailbox string) (*relayClient, error) {
	conn, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		return nil, err
	}
	c := &relayClient{conn: conn, r: bufio.NewReader(conn)}
	if _, err := c.r.ReadSlice('\n'); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := c.expectOK("STARTTLS"); err != nil {
		conn.Close()
		return nil, err
	}
	tc := tls.Client(conn, env.certs.ClientTLS())
	if err := tc.Handshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS: %w", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	for _, cmd := range []string{"LOGIN " + strconv.Quote(user) + " " + strconv.Quote(pw), "SELECT " + mailbox} {
		if err := c.expectOK(cmd); err != nil {
			tc.Close()
			return nil, err
		}
	}
	return c, nil
}

// expectOK sends one command and wants OK.
func (c *relayClient) expectOK(cmd string) error {
	c.n++
	tag := "t" + strconv.Itoa(c.n)
	if _, err := fmt.Fprintf(c.conn, "%s %s\r\n", tag, cmd); err != nil {
		return err
	}
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(cmd)[0], err)
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line[len(tag)+1:], "OK") {
				return fmt.Errorf("%s: %q", strings.Fields(cmd)[0], line)
			}
			return nil
		}
	}
}

// run sends count commands cmd, window at a time (1: one at a time, each
// after the previous reply), and reads their tagged replies, which must be
// OK.
func (c *relayClient) run(cmd string, count, window int) error {
	for done := 0; done < count; {
		k := min(window, count-done)
		c.buf = c.buf[:0]
		first := c.n + 1
		for range k {
			c.n++
			c.buf = append(c.buf, 'x')
			c.buf = strconv.AppendInt(c.buf, int64(c.n), 10)
			c.buf = append(c.buf, ' ')
			c.buf = append(c.buf, cmd...)
			c.buf = append(c.buf, '\r', '\n')
		}
		if _, err := c.conn.Write(c.buf); err != nil {
			return err
		}
		for got := 0; got < k; {
			line, err := c.r.ReadSlice('\n')
			if err != nil {
				return err
			}
			if line[0] != 'x' {
				continue
			}
			sp := strings.IndexByte(string(line), ' ')
			n, err := strconv.Atoi(string(line[1:sp]))
			if err != nil || n != first+got || !strings.HasPrefix(string(line[sp+1:]), "OK") {
				return fmt.Errorf("reply %q, want x%d OK", line, first+got)
			}
			got++
		}
		done += k
	}
	return nil
}

// seedRelayMailbox writes the benchmark's mailbox once per Dovecot.
func seedRelayMailbox(tb testing.TB, d *testenv.Dovecot) {
	tb.Helper()
	if _, err := os.Stat(filepath.Join(d.Dir, "mail", "alice", "."+relayBenchMailbox)); err == nil {
		return
	} else if !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	msgs := make([][]byte, relayBenchMessages)
	for i := range msgs {
		msgs[i] = testenv.Message(2000+i, 512)
	}
	if err := d.SeedMailbox("alice", relayBenchMailbox, msgs); err != nil {
		tb.Fatal(err)
	}
}

// relayTarget is one column of BenchmarkIMAPRelay.
type relayTarget struct {
	name, addr, user, pw string
	pid                  int // passgate's process; 0 for Dovecot, or in process
}

// BenchmarkIMAPRelay reports, for NOOP and UID FETCH 1:* (FLAGS), one at a
// time and pipelined (relayBenchWindow in flight), the commands per
// second directly to Dovecot and through passgate, and passgate's CPU
// time per relayed command (from /proc, over everything its process did
// while relaying). Each round runs relayBenchChunk commands of every case
// on both targets, taking turns; run it with -benchtime 10x or more.
func BenchmarkIMAPRelay(b *testing.B) {
	d := env.dovecot
	seedRelayMailbox(b, d)
	pc := passgateConfig{upstreamTLS: "none"}
	inProcess := os.Getenv("PASSGATE_BENCH_INPROCESS") != ""
	if !inProcess {
		pc.binary = passgateBinary(b)
	}
	p := startPassgate(b, pc)
	p.enforce(b, "alice")
	pw := p.appPassword(b, "alice", "relay")
	targets := []relayTarget{
		{name: "direct", addr: d.IMAPAddr, user: "alice", pw: d.Users["alice"]},
		{name: "passgate", addr: p.imapAddr, user: "alice", pw: pw},
	}
	if !inProcess {
		targets[1].pid = p.proc.Process.Pid
	}
	cases := []struct {
		name, cmd string
		window    int
	}{
		{"NOOP one at a time", "NOOP", 1},
		{"NOOP pipelined", "NOOP", relayBenchWindow},
		{"UID FETCH flags one at a time", "UID FETCH 1:* (FLAGS)", 1},
		{"UID FETCH flags pipelined", "UID FETCH 1:* (FLAGS)", relayBenchWindow},
	}
	type cell struct {
		took time.Duration
		cpu  time.Duration
		n    int
	}
	cells := make([][]cell, len(cases))
	sessions := make([]*relayClient, len(targets))
	for i, t := range targets {
		s, err := dialRelayClient(t.addr, t.user, t.pw, relayBenchMailbox)
		if err != nil {
			b.Fatalf("%s: %v", t.name, err)
		}
		defer s.conn.Close()
		sessions[i] = s
		// Warm up: code paths, buffers, Dovecot's caches.
		for _, c := range cases {
			if err := s.run(c.cmd, 100, c.window); err != nil {
				b.Fatalf("%s: warm-up %s: %v", t.name, c.name, err)
			}
		}
	}
	for i := range cells {
		cells[i] = make([]cell, len(targets))
	}
	hz := clockTicks()
	load0 := loadAvg()
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for ci, c := range cases {
			for k := range targets {
				ti := (round + k) % len(targets)
				t := targets[ti]
				var cpu0 time.Duration
				if t.pid != 0 {
					cpu0 = cpuOfProcess(b, t.pid, hz)
				}
				start := time.Now()
				if err := sessions[ti].run(c.cmd, relayBenchChunk, c.window); err != nil {
					b.Fatalf("%s: %s: %v", t.name, c.name, err)
				}
				cl := &cells[ci][ti]
				cl.took += time.Since(start)
				cl.n += relayBenchChunk
				if t.pid != 0 {
					cl.cpu += cpuOfProcess(b, t.pid, hz) - cpu0
				}
			}
		}
	}
	b.StopTimer()
	var out strings.Builder
	fmt.Fprintf(&out, "IMAP commands relayed after login, %d per case and target; load %s before, %s after\n", b.N*relayBenchChunk, load0, loadAvg())
	fmt.Fprintf(&out, "| case | direct commands/s | passgate commands/s | × direct | passgate CPU µs/command |\n|---|---|---|---|---|\n")
	for ci, c := range cases {
		rate := func(cl cell) float64 { return float64(cl.n) / cl.took.Seconds() }
		dr, pr := rate(cells[ci][0]), rate(cells[ci][1])
		cpu := "—"
		if targets[1].pid != 0 {
			per := float64(cells[ci][1].cpu.Nanoseconds()) / 1e3 / float64(cells[ci][1].n)
			cpu = fmt.Sprintf("%.1f", per)
			b.ReportMetric(per, metricName(c.name)+"-cpu-us/cmd")
		}
		fmt.Fprintf(&out, "| %s | %.0f | %.0f | %.2f | %s |\n", c.name, dr, pr, pr/dr, cpu)
		b.ReportMetric(pr/dr, metricName(c.name)+"-x-direct")
	}
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Print(out.String())
}
