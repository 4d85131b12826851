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
	"sync/atomic"
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
// focus the profile on passgate's packages). PASSGATE_BENCH_BASELINE_BIN
// adds another passgate binary (an older build) as a third target;
// PASSGATE_RELAY_CASE keeps only the cases whose name contains it.

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
	return dialRelayClientTLS(addr, user, pw, mailbox, true)
}

// dialRelayClientTLS is dialRelayClient, without STARTTLS unless
// startTLS.
func dialRelayClientTLS(addr, user, pw, mailbox string, startTLS bool) (*relayClient, error) {
	conn, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		return nil, err
	}
	c := &relayClient{conn: conn, r: bufio.NewReader(conn)}
	if _, err := c.r.ReadSlice('\n'); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if startTLS {
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
	}
	for _, cmd := range []string{"LOGIN " + strconv.Quote(user) + " " + strconv.Quote(pw), "SELECT " + mailbox} {
		if err := c.expectOK(cmd); err != nil {
			c.conn.Close()
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
// time, context switches (its threads' wake-ups) and read and write
// system calls per relayed command
// (from /proc, over everything its process did while relaying). Each
// round runs relayBenchChunk commands of every case on both targets,
// taking turns; run it with -benchtime 10x or more. The clients use
// STARTTLS (client-tls=starttls) or plaintext (client-tls=none: passgate
// trusts the loopback network for a plaintext login); passgate's
// upstream is plaintext either way.
func BenchmarkIMAPRelay(b *testing.B) {
	for _, startTLS := range []bool{true, false} {
		b.Run("client-tls="+map[bool]string{true: "starttls", false: "none"}[startTLS], func(b *testing.B) { benchIMAPRelay(b, startTLS) })
	}
}

func benchIMAPRelay(b *testing.B, startTLS bool) {
	d := env.dovecot
	seedRelayMailbox(b, d)
	pc := passgateConfig{upstreamTLS: "none"}
	if !startTLS {
		pc.trusted = []string{"127.0.0.0/8"}
	}
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
	if base := os.Getenv("PASSGATE_BENCH_BASELINE_BIN"); base != "" {
		bpc := pc
		bpc.binary = base
		bp := startPassgate(b, bpc)
		bp.enforce(b, "alice")
		targets = append(targets, relayTarget{name: "baseline", addr: bp.imapAddr, user: "alice", pw: bp.appPassword(b, "alice", "relay"), pid: bp.proc.Process.Pid})
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
	// PASSGATE_RELAY_CASE keeps only the cases whose name contains it
	// (for a profile or a syscall count of one case).
	if only := os.Getenv("PASSGATE_RELAY_CASE"); only != "" {
		kept := cases[:0]
		for _, c := range cases {
			if strings.Contains(c.name, only) {
				kept = append(kept, c)
			}
		}
		if len(kept) == 0 {
			b.Fatalf("PASSGATE_RELAY_CASE %q matches no case", only)
		}
		cases = kept
	}
	type cell struct {
		took time.Duration
		cpu  time.Duration
		csw  int64 // passgate's context switches
		rw   int64 // passgate's read and write system calls
		n    int
	}
	cells := make([][]cell, len(cases))
	sessions := make([]*relayClient, len(targets))
	for i, t := range targets {
		s, err := dialRelayClientTLS(t.addr, t.user, t.pw, relayBenchMailbox, startTLS)
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
				var csw0, rw0 int64
				if t.pid != 0 {
					cpu0 = cpuOfProcess(b, t.pid, hz)
					csw0 = contextSwitches(t.pid)
					rw0 = readWriteCalls(t.pid)
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
					cl.csw += contextSwitches(t.pid) - csw0
					cl.rw += readWriteCalls(t.pid) - rw0
				}
			}
		}
	}
	b.StopTimer()
	var out strings.Builder
	fmt.Fprintf(&out, "IMAP commands relayed after login, client STARTTLS %v, %d per case and target; load %s before, %s after\n", startTLS, b.N*relayBenchChunk, load0, loadAvg())
	fmt.Fprintf(&out, "| case | target | commands/s | × direct | CPU µs/command | context switches/command | reads and writes/command |\n|---|---|---|---|---|---|---|\n")
	for ci, c := range cases {
		rate := func(cl cell) float64 { return float64(cl.n) / cl.took.Seconds() }
		dr := rate(cells[ci][0])
		for ti, t := range targets {
			r := rate(cells[ci][ti])
			cpu, csw, rw := "—", "—", "—"
			if t.pid != 0 {
				per := float64(cells[ci][ti].cpu.Nanoseconds()) / 1e3 / float64(cells[ci][ti].n)
				cpu = fmt.Sprintf("%.1f", per)
				csw = fmt.Sprintf("%.2f", float64(cells[ci][ti].csw)/float64(cells[ci][ti].n))
				rw = fmt.Sprintf("%.2f", float64(cells[ci][ti].rw)/float64(cells[ci][ti].n))
				b.ReportMetric(per, t.name+"/"+metricName(c.name)+"-cpu-us/cmd")
			}
			if ti > 0 {
				b.ReportMetric(r/dr, t.name+"/"+metricName(c.name)+"-x-direct")
			}
			fmt.Fprintf(&out, "| %s | %s | %.0f | %.2f | %s | %s | %s |\n", c.name, t.name, r, r/dr, cpu, csw, rw)
		}
	}
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Print(out.String())
}

// readWriteCalls returns the read and write system calls that process pid
// has made so far, those that said EAGAIN too (syscr and syscw of
// /proc/pid/io: read(2), write(2) and their kin, not the peeks of
// recvfrom(2); 0 where /proc does not tell).
func readWriteCalls(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0
	}
	var total int64
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "syscr" || k == "syscw") {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			total += n
		}
	}
	return total
}

// contextSwitches returns the context switches, voluntary and not, of all
// of process pid's threads so far (0 where /proc does not tell): a
// thread that goes to sleep and is woken again counts one. Threads that
// have ended are not counted.
func contextSwitches(pid int) int64 {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total int64
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, t.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				total += n
			}
		}
	}
	return total
}

// The stress benchmark: what Dovecot's imaptest does with its defaults
// but LOGOUT at 0 % (sessions kept), in Go, since imaptest is not
// packaged for Debian.
const (
	stressSessions = 50   // concurrent logged-in sessions per target
	stressSeed     = 5    // messages each session's mailbox starts with
	stressBody     = 2000 // body octets of an appended message
)

// stressMailbox is session i's own mailbox, so that the sessions never
// wait on each other's locks and every command's reply is known.
func stressMailbox(i int) string { return fmt.Sprintf("Stress%02d", i) }

// seedStressMailboxes writes the stress mailboxes once per Dovecot.
func seedStressMailboxes(tb testing.TB, d *testenv.Dovecot) {
	tb.Helper()
	for i := range stressSessions {
		mb := stressMailbox(i)
		if _, err := os.Stat(filepath.Join(d.Dir, "mail", "alice", "."+mb)); err == nil {
			continue
		} else if !errors.Is(err, os.ErrNotExist) {
			tb.Fatal(err)
		}
		msgs := make([][]byte, stressSeed)
		for k := range msgs {
			msgs[k] = testenv.Message(3000+k, stressBody)
		}
		if err := d.SeedMailbox("alice", mb, msgs); err != nil {
			tb.Fatal(err)
		}
	}
}

// stressCycle is one round of a stress session's commands, imaptest's
// default mix without LOGOUT: APPEND a message, NOOP, FETCH the flags of
// all, FETCH the newest one's envelope and body, STORE a flag on it, mark
// the oldest deleted and EXPUNGE it, so that the mailbox keeps its size.
// The APPEND's literal is non-synchronising (LITERAL+), so that every
// command is one request and one reply.
func stressCycle(mailbox string, msg []byte) []string {
	return []string{
		fmt.Sprintf("APPEND %s (\\Seen) {%d+}\r\n%s", mailbox, len(msg), msg),
		"NOOP",
		"FETCH 1:* (FLAGS)",
		"FETCH * (ENVELOPE BODY.PEEK[])",
		"STORE * +FLAGS (\\Flagged)",
		"STORE 1 +FLAGS (\\Deleted)",
		"EXPUNGE",
	}
}

// do sends one command and reads up to its tagged reply, which must be
// OK, skipping the literals of untagged responses.
func (c *relayClient) do(cmd string) error {
	c.n++
	c.buf = append(c.buf[:0], 's')
	c.buf = strconv.AppendInt(c.buf, int64(c.n), 10)
	tagLen := len(c.buf)
	c.buf = append(c.buf, ' ')
	c.buf = append(c.buf, cmd...)
	c.buf = append(c.buf, '\r', '\n')
	if _, err := c.conn.Write(c.buf); err != nil {
		return err
	}
	tag := c.buf[:tagLen]
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(cmd)[0], err)
		}
		if len(line) > tagLen && string(line[:tagLen]) == string(tag) && line[tagLen] == ' ' {
			if !strings.HasPrefix(string(line[tagLen+1:]), "OK") {
				return fmt.Errorf("%s: %q", strings.Fields(cmd)[0], line)
			}
			return nil
		}
		// An untagged response may end in a literal announcement.
		if t := strings.TrimRight(string(line), "\r\n"); strings.HasSuffix(t, "}") {
			if i := strings.LastIndexByte(t, '{'); i >= 0 {
				if n, err := strconv.Atoi(t[i+1 : len(t)-1]); err == nil {
					if _, err := c.r.Discard(n); err != nil {
						return err
					}
				}
			}
		}
	}
}

// stressTarget is one column of BenchmarkIMAPStress.
type stressTarget struct {
	relayTarget
	sessions []*relayClient
	cmds     int64
	took     time.Duration
	cpu      time.Duration
	csw      int64 // passgate's context switches
	rw       int64 // passgate's read and write system calls
}

// BenchmarkIMAPStress is imaptest's stress run with sessions kept:
// stressSessions sessions at once, each logged in (STARTTLS, LOGIN) and
// in its own mailbox, run stressCycle's commands one at a time for a
// round, directly to Dovecot and through a "passgate serve" process
// (upstream plaintext), the targets taking turns round by round so that
// each sees the same load; all share the machine's CPUs, so the figure is
// commands per second with the CPU that each path costs. passgate's CPU
// and context switches per command are read from /proc. The clients use STARTTLS
// (client-tls=starttls: Dovecot's login process relays TLS for the direct
// sessions) or plaintext (client-tls=none: Dovecot hands the connection to
// the mail process, and passgate trusts the loopback network for a
// plaintext login). PASSGATE_STRESS_ROUND sets a round's length (default
// 3s); PASSGATE_BENCH_BASELINE_BIN adds another passgate binary (an older
// build) to the rotation, PASSGATE_BENCH_BINARY replaces the one built
// from this tree. Run it with -benchtime 4x or more.
func BenchmarkIMAPStress(b *testing.B) {
	for _, startTLS := range []bool{true, false} {
		b.Run("client-tls="+map[bool]string{true: "starttls", false: "none"}[startTLS], func(b *testing.B) { benchIMAPStress(b, startTLS) })
	}
}

func benchIMAPStress(b *testing.B, startTLS bool) {
	d := env.dovecot
	seedStressMailboxes(b, d)
	round := 3 * time.Second
	if v := os.Getenv("PASSGATE_STRESS_ROUND"); v != "" {
		r, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("PASSGATE_STRESS_ROUND: %v", err)
		}
		round = r
	}
	targets := []*stressTarget{{relayTarget: relayTarget{name: "direct", addr: d.IMAPAddr, user: "alice", pw: d.Users["alice"]}}}
	add := func(name, bin string) {
		pc := passgateConfig{upstreamTLS: "none", binary: bin}
		if !startTLS {
			pc.trusted = []string{"127.0.0.0/8"}
		}
		p := startPassgate(b, pc)
		p.enforce(b, "alice")
		pw := p.appPassword(b, "alice", "stress")
		targets = append(targets, &stressTarget{relayTarget: relayTarget{name: name, addr: p.imapAddr, user: "alice", pw: pw, pid: p.proc.Process.Pid}})
	}
	bin := os.Getenv("PASSGATE_BENCH_BINARY")
	if bin == "" {
		bin = passgateBinary(b)
	}
	add("passgate", bin)
	if base := os.Getenv("PASSGATE_BENCH_BASELINE_BIN"); base != "" {
		add("baseline", base)
	}
	msg := testenv.Message(4000, stressBody)
	for _, t := range targets {
		for i := range stressSessions {
			s, err := dialRelayClientTLS(t.addr, t.user, t.pw, stressMailbox(i), startTLS)
			if err != nil {
				b.Fatalf("%s: session %d: %v", t.name, i, err)
			}
			defer s.conn.Close()
			t.sessions = append(t.sessions, s)
		}
	}
	// runRound runs every session of t for d and returns the commands
	// completed.
	runRound := func(t *stressTarget, d time.Duration) (int64, error) {
		stop := make(chan struct{})
		errs := make(chan error, len(t.sessions))
		var total atomic.Int64
		for i, s := range t.sessions {
			cycle := stressCycle(stressMailbox(i), msg)
			go func() {
				for {
					for _, cmd := range cycle {
						if err := s.do(cmd); err != nil {
							errs <- err
							return
						}
						total.Add(1)
					}
					select {
					case <-stop:
						errs <- nil
						return
					default:
					}
				}
			}()
		}
		time.Sleep(d)
		close(stop)
		var first error
		for range t.sessions {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return total.Load(), first
	}
	// Warm up every target: processes, caches, code paths.
	for _, t := range targets {
		if _, err := runRound(t, round/3); err != nil {
			b.Fatalf("%s: warm-up: %v", t.name, err)
		}
	}
	hz := clockTicks()
	load0 := loadAvg()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range targets {
			t := targets[(i+k)%len(targets)]
			var cpu0 time.Duration
			var csw0, rw0 int64
			if t.pid != 0 {
				cpu0 = cpuOfProcess(b, t.pid, hz)
				csw0 = contextSwitches(t.pid)
				rw0 = readWriteCalls(t.pid)
			}
			start := time.Now()
			n, err := runRound(t, round)
			if err != nil {
				b.Fatalf("%s: round %d: %v", t.name, i, err)
			}
			t.took += time.Since(start)
			t.cmds += n
			if t.pid != 0 {
				t.cpu += cpuOfProcess(b, t.pid, hz) - cpu0
				t.csw += contextSwitches(t.pid) - csw0
				t.rw += readWriteCalls(t.pid) - rw0
			}
		}
	}
	b.StopTimer()
	direct := float64(targets[0].cmds) / targets[0].took.Seconds()
	var out strings.Builder
	fmt.Fprintf(&out, "IMAP stress, client STARTTLS %v, %d sessions kept per target, %d rounds of %v each; load %s before, %s after\n", startTLS, stressSessions, b.N, round, load0, loadAvg())
	fmt.Fprintf(&out, "| target | commands/s | × direct | passgate CPU µs/command | context switches/command | reads and writes/command |\n|---|---|---|---|---|---|\n")
	for _, t := range targets {
		rate := float64(t.cmds) / t.took.Seconds()
		cpu, csw, rw := "—", "—", "—"
		if t.pid != 0 {
			per := float64(t.cpu.Nanoseconds()) / 1e3 / float64(t.cmds)
			cpu = fmt.Sprintf("%.1f", per)
			csw = fmt.Sprintf("%.2f", float64(t.csw)/float64(t.cmds))
			rw = fmt.Sprintf("%.2f", float64(t.rw)/float64(t.cmds))
			b.ReportMetric(per, t.name+"-cpu-us/cmd")
			b.ReportMetric(rate/direct, t.name+"-x-direct")
		}
		fmt.Fprintf(&out, "| %s | %.0f | %.2f | %s | %s | %s |\n", t.name, rate, rate/direct, cpu, csw, rw)
	}
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Print(out.String())
}
