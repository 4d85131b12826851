package integration

import (
	"bufio"
	"cmp"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// BenchmarkIMAPLoginPhases times each step of a whole IMAP login session
// (connect and greeting, STARTTLS with a full TLS 1.3 handshake, LOGIN
// from command to tagged reply, EXAMINE INBOX, LOGOUT) directly to the
// performance-mode Dovecot and through passgate, with a raw client that
// sends nothing else. The column direct-master logs in to Dovecot as
// passgate does on a user's behalf (the master user, alice as
// authorization identity), which is the floor of passgate's LOGIN:
//
//	go test -run '^$' -bench IMAPLoginPhases -benchtime 300x ./integration/
//
// passgate runs as its own "passgate serve" process (the binary built from
// this tree: its CPU time per session is read from /proc), plaintext to
// Dovecot with ID forwarding and the master user, as in BenchmarkIMAPLogin.
// Each iteration runs one session of every column, in an order that turns,
// so that all see the same load of a shared machine.
// PASSGATE_BENCH_DOVECOT=default measures against Dovecot in its default
// mode (a login process per connection) instead.
// PASSGATE_BENCH_BASELINE=BIN adds a column for another passgate binary
// (an older build: before and after in one run);
// PASSGATE_BENCH_INPROCESS=1 runs this tree's passgate inside the test
// binary instead, for -cpuprofile (then without CPU per session), and
// PASSGATE_BENCH_BINARY=BIN uses BIN for the passgate column.
func BenchmarkIMAPLoginPhases(b *testing.B) {
	mode := cmp.Or(os.Getenv("PASSGATE_BENCH_DOVECOT"), "performance")
	var perf *benchTarget
	for _, t := range benchTargets(b) {
		if t.name == mode {
			perf = t
		}
	}
	if perf == nil {
		b.Fatalf("no %s-mode Dovecot among the benchmark targets (PASSGATE_BENCH_DOVECOT: performance or default)", mode)
	}
	dv := perf.dovecot
	cols := []*phaseColumn{
		{name: "direct", addr: dv.IMAPAddr, user: "alice", pw: dv.Users["alice"]},
		// Dovecot with the login passgate makes on a user's behalf
		// (AUTHENTICATE PLAIN with alice as authorization identity and
		// the master user's credentials): the upstream part of
		// passgate's LOGIN phase, without passgate.
		{name: "direct-master", addr: dv.IMAPAddr, user: "alice",
			loginCmd: "l AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("alice\x00"+dv.MasterUser+"\x00"+dv.MasterPassword))},
		// The same with the ID that passgate writes with it (the
		// client's and passgate's own addresses).
		{name: "direct-master-id", addr: dv.IMAPAddr, user: "alice",
			before:   `i ID ("x-originating-ip" "127.0.0.9" "x-originating-port" "40000" "x-connected-ip" "127.0.0.1" "x-connected-port" "40001")` + "\r\n",
			loginCmd: "l AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString([]byte("alice\x00"+dv.MasterUser+"\x00"+dv.MasterPassword))},
	}
	add := func(name, bin string) {
		p := startPassgate(b, passgateConfig{binary: bin, upstreams: []string{perf.dovecot.IMAPAddr}, upstreamTLS: "none"})
		p.enforce(b, "alice")
		c := &phaseColumn{name: name, addr: p.imapAddr, user: "alice", pw: p.appPassword(b, "alice", "bench")}
		if p.proc != nil {
			c.pid = p.proc.Process.Pid
		}
		cols = append(cols, c)
	}
	bin := ""
	switch {
	case os.Getenv("PASSGATE_BENCH_BINARY") != "":
		bin = os.Getenv("PASSGATE_BENCH_BINARY")
	case os.Getenv("PASSGATE_BENCH_INPROCESS") == "":
		bin = passgateBinary(b)
	}
	add("passgate", bin)
	if base := os.Getenv("PASSGATE_BENCH_BASELINE"); base != "" {
		add("baseline", base)
	}
	for _, c := range cols {
		for range 5 { // warm up: first handshakes, Dovecot's processes
			if _, err := c.session(); err != nil {
				b.Fatalf("%s: %v", c.name, err)
			}
		}
	}
	hz := clockTicks()
	load0 := loadAvg()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range cols {
			c := cols[(i+k)%len(cols)]
			var cpu0 time.Duration
			if c.pid != 0 {
				cpu0 = cpuOfProcess(b, c.pid, hz)
			}
			ph, err := c.session()
			if err != nil {
				b.Fatalf("%s: session %d: %v", c.name, i, err)
			}
			if c.pid != 0 {
				c.cpu += cpuOfProcess(b, c.pid, hz) - cpu0
			}
			for j, d := range ph {
				c.took[j] = append(c.took[j], d)
			}
		}
	}
	b.StopTimer()
	var out strings.Builder
	fmt.Fprintf(&out, "IMAP login session phases, Dovecot in %s mode, medians in ms, %d sessions each; load %s before, %s after\n", mode, b.N, load0, loadAvg())
	fmt.Fprintf(&out, "| column | connect+greeting | STARTTLS+handshake | LOGIN | EXAMINE | LOGOUT | whole (p10–p90) | × direct | CPU µs/session |\n|---|---|---|---|---|---|---|---|---|\n")
	direct := statsOf(cols[0].took[phaseWhole]).p50
	for _, c := range cols {
		fmt.Fprintf(&out, "| %s |", c.name)
		for j := range phaseWhole {
			fmt.Fprintf(&out, " %s |", msText(statsOf(c.took[j]).p50))
		}
		w := statsOf(c.took[phaseWhole])
		cpu := "—"
		if c.pid != 0 {
			cpu = fmt.Sprintf("%d", c.cpu.Microseconds()/int64(b.N))
		}
		fmt.Fprintf(&out, " %s (%s–%s) | %.3f | %s |\n", msText(w.p50), msText(w.p10), msText(w.p90), float64(w.p50)/float64(direct), cpu)
		if c.name != "direct" {
			b.ReportMetric(float64(w.p50)/float64(direct), "x-direct-median-"+c.name)
			b.ReportMetric(float64(statsOf(c.took[phaseLogin]).p50)/float64(time.Millisecond), "login-ms-"+c.name)
		}
	}
	b.ReportMetric(float64(statsOf(cols[0].took[phaseLogin]).p50)/float64(time.Millisecond), "login-ms-direct")
	fmt.Print(out.String())
}

// The phases of a session, in order, then the whole.
const (
	phaseConnect = iota
	phaseStartTLS
	phaseLogin
	phaseExamine
	phaseLogout
	phaseWhole
	phaseCount
)

// phaseColumn is one target of BenchmarkIMAPLoginPhases and its timings.
type phaseColumn struct {
	name, addr, user, pw string
	loginCmd             string // the login command, when not LOGIN user pw
	before               string // commands written with the login command, in one write
	pid                  int    // passgate's process, 0 when not one
	took                 [phaseCount][]time.Duration
	cpu                  time.Duration
}

// session runs one session and returns the time of each phase.
func (c *phaseColumn) session() ([phaseCount]time.Duration, error) {
	var ph [phaseCount]time.Duration
	start := time.Now()
	mark := start
	step := func(i int) {
		now := time.Now()
		ph[i] = now.Sub(mark)
		mark = now
	}
	raw, err := net.DialTimeout("tcp", c.addr, patience)
	if err != nil {
		return ph, err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(patience))
	br := bufio.NewReader(raw)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		return ph, fmt.Errorf("greeting %q: %v", line, err)
	}
	step(phaseConnect)
	if _, err := phaseCommand(raw, br, "s STARTTLS"); err != nil {
		return ph, err
	}
	tc := tls.Client(raw, env.certs.ClientTLS()) // a fresh configuration: a full handshake
	if err := tc.Handshake(); err != nil {
		return ph, fmt.Errorf("TLS handshake: %w", err)
	}
	br = bufio.NewReader(tc)
	step(phaseStartTLS)
	login := c.loginCmd
	if login == "" {
		login = fmt.Sprintf("l LOGIN %q %q", c.user, c.pw)
	}
	if _, err := phaseCommand(tc, br, c.before+login); err != nil {
		return ph, err
	}
	step(phaseLogin)
	if _, err := phaseCommand(tc, br, "e EXAMINE INBOX"); err != nil {
		return ph, err
	}
	step(phaseExamine)
	if _, err := phaseCommand(tc, br, "o LOGOUT"); err != nil {
		return ph, err
	}
	step(phaseLogout)
	ph[phaseWhole] = time.Since(start)
	return ph, nil
}

// phaseCommand writes one command line and reads up to its tagged reply,
// which must be OK.
func phaseCommand(w net.Conn, br *bufio.Reader, cmd string) (string, error) {
	// The tag of the last command: earlier ones' answers are skipped.
	last := cmd[strings.LastIndex(cmd, "\n")+1:]
	tag, _, _ := strings.Cut(last, " ")
	if _, err := w.Write([]byte(cmd + "\r\n")); err != nil {
		return "", fmt.Errorf("%s: write: %w", tag, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("%s: read: %w", tag, err)
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				return line, fmt.Errorf("%s: %q", tag, strings.TrimSpace(line))
			}
			return line, nil
		}
	}
}
