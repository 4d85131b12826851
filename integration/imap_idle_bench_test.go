package integration

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
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

// fileRSSKiB is the part of a process's resident set (KiB) mapped from
// files (code, SQLite's shared WAL index), from /proc/PID/smaps.
func fileRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	var total int64
	fromFile := false
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		if _, _, ok := strings.Cut(f[0], "-"); ok && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			fromFile = len(f) >= 6 && strings.HasPrefix(f[5], "/")
			continue
		}
		if f[0] == "Rss:" && len(f) >= 2 && fromFile {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("smaps: %q", l)
			}
			total += n
		}
	}
	return total, nil
}

// idleSession logs in over implicit TLS, selects INBOX and enters IDLE,
// the state a phone or Outlook keeps for hours.
func idleSession(addr, user, pw string) (net.Conn, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: patience}, "tcp", addr, env.certs.ClientTLS())
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(patience))
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
// is divided by their number. Beside it, from passgate's /metrics, the
// growth of its goroutines, of its heap in use and of its goroutine stacks
// per session, which say what the resident set is made of. design.md's
// figures for comparison: Dovecot as a proxy 83 KiB, nginx 23 KiB per
// idle session.
//
// PASSGATE_BENCH_BASELINE_BIN (or PASSGATE_BENCH_BASELINE) names another
// passgate binary (an older build), measured the same way in the same run,
// the two taking turns; PASSGATE_BENCH_BINARY replaces the binary built
// from this tree. PASSGATE_BENCH_GOGC=10 shows how much of the
// figure is garbage not yet collected rather than live memory, and
// PASSGATE_BENCH_GOMEMLIMIT (say 40MiB) what a memory limit, as an
// operator sets for many idle sessions, makes of it.
// PASSGATE_BENCH_INPROCESS=1 runs this tree's passgate inside the test
// process instead, with two collections before each sample so that the
// heap and stack figures are live memory (its resident set then counts the
// clients too), and
// PASSGATE_BENCH_HEAPPROFILE=FILE writes the heap profile with the
// sessions open, every allocation recorded, to FILE.UPSTREAMTLS.passgate
// (go tool pprof -sample_index=inuse_space).
func BenchmarkIMAPIdleSessionMemory(b *testing.B) {
	for _, upTLS := range []string{"none", "starttls"} {
		b.Run("upstream-tls="+upTLS, func(b *testing.B) { benchIdleMemory(b, upTLS) })
	}
}

// idleTarget is one passgate process of BenchmarkIMAPIdleSessionMemory.
type idleTarget struct {
	name        string
	pid         int
	addr        string // implicit TLS
	metrics     string // metrics.listen
	pw          string // alice's app password
	upstreamTLS string
	conns       []net.Conn
	rows        []idleFigures
}

// idleFigures are the growth per session of one measurement.
type idleFigures struct {
	rssKiB, heapKiB, stackKiB, goroutines float64
	settledKiB, heapSettled, liveSettled  float64 // once settled (see settle)
	goKiB, fileKiB, otherKiB              float64 // the settled growth: what the Go runtime holds from the system, files, the rest
	rssTotal                              int64
}

// startIdleTarget runs binary bin as "passgate serve" with its own store,
// alice enforced and given an app password.
func startIdleTarget(b *testing.B, name, bin, upstreamTLS string) *idleTarget {
	p := startPassgate(b, passgateConfig{upstreamTLS: upstreamTLS, metrics: true})
	p.enforce(b, "alice")
	t := &idleTarget{name: name, addr: p.imapsAddr, metrics: p.metrics, pw: p.appPassword(b, "alice", "idle"), upstreamTLS: upstreamTLS}
	if bin == "" {
		// PASSGATE_BENCH_INPROCESS: keep the in-process instance.
		t.pid = os.Getpid()
		return t
	}
	// Hand the ports over from the in-process instance to the binary.
	p.cancel()
	<-p.done
	p.done <- 0
	cmd := exec.Command(bin, "serve", "--config", p.config)
	cmd.Env = os.Environ()
	if v := os.Getenv("PASSGATE_BENCH_GOGC"); v != "" {
		cmd.Env = append(cmd.Env, "GOGC="+v)
	}
	if v := os.Getenv("PASSGATE_BENCH_GOMEMLIMIT"); v != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		t.closeAll()
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	t.pid = cmd.Process.Pid
	for deadline := time.Now().Add(patience); !dialable(t.addr) || !dialable(t.metrics); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%s: passgate binary does not listen", name)
		}
	}
	return t
}

// open opens n more idle sessions.
func (t *idleTarget) open(b *testing.B, n int) {
	for range n {
		c, err := idleSession(t.addr, "alice", t.pw)
		if err != nil {
			b.Fatalf("%s: session %d: %v", t.name, len(t.conns), err)
		}
		t.conns = append(t.conns, c)
	}
}

func (t *idleTarget) closeAll() {
	for _, c := range t.conns {
		c.Close()
	}
	t.conns = t.conns[:0]
}

// sample reads the resident set from /proc and the Go runtime's figures
// from /metrics.
func (t *idleTarget) sample(b *testing.B) (rss int64, m map[string]float64) {
	if t.pid == os.Getpid() {
		// In process: count live memory only, with the idle
		// goroutines' stacks shrunk (each collection may halve them).
		for range 4 {
			runtime.GC()
		}
	}
	rss, err := rssKiB(t.pid)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := http.Get("http://" + t.metrics + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	m = map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "passgate_relay_parked_directions{"); ok {
			// One line per listener: their sum.
			_, v, _ := strings.Cut(rest, "} ")
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("parked: %q", line)
			}
			m["parked"] += f
			continue
		}
		if v, ok := strings.CutPrefix(line, "go_gc_duration_seconds_count "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("gc count: %q", line)
			}
			m["gc"] = f
			continue
		}
		// Every runtime gauge without labels: go_goroutines and the
		// go_memstats_* figures.
		if name, v, ok := strings.Cut(line, " "); ok && (name == "go_goroutines" || strings.HasPrefix(name, "go_memstats_")) {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("%s: %q", name, line)
			}
			m[name] = f
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return rss, m
}

// settle samples the process once it has reached the state of a server
// whose sessions have been idle for minutes: it waits for a garbage
// collection that begins after the call (the runtime forces one at least
// every two minutes; an idle process may start none before that), then
// until the resident set has moved by less than 1% over three samples a
// second apart (the scavenger gives back what the collection freed). Its
// figures do not depend on where in its cycle the collector was when the
// sessions were opened, which the sample half a second after them does.
// A second collection does not lower them: the benchmark's own samples
// of /metrics, like any scrape, make garbage, so the heap grows towards
// the collector's goal again between collections, and the scavenger keeps
// up to 1.1 times the heap in use at the end of a collection's marking.
func (t *idleTarget) settle(b *testing.B) (int64, map[string]float64) {
	if t.pid == os.Getpid() {
		return t.sample(b) // collects by itself
	}
	_, m := t.sample(b)
	gc0 := m["gc"]
	deadline := time.Now().Add(5 * time.Minute)
	for m["gc"] <= gc0 {
		if time.Now().After(deadline) {
			b.Fatalf("%s: no garbage collection in 5 minutes", t.name)
		}
		time.Sleep(time.Second)
		_, m = t.sample(b)
	}
	last, stable := int64(-1), 0
	for {
		rss, m := t.sample(b)
		if last >= 0 && rss-last <= last/100 && last-rss <= last/100 {
			stable++
		} else {
			stable = 0
		}
		if stable == 3 {
			return rss, m
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: the resident set did not settle in 5 minutes", t.name)
		}
		last = rss
		time.Sleep(time.Second)
	}
}

// measure opens idleSessions sessions after a warm-up and records what
// they added: half a second after they were opened (once their relays
// are parked, for a passgate that parks them), and once settled.
func (t *idleTarget) measure(b *testing.B) {
	t.open(b, 10) // warm up: code pages, pools, first TLS handshakes
	time.Sleep(200 * time.Millisecond)
	settled0, ms0 := t.settle(b)
	f0, err := fileRSSKiB(t.pid)
	if err != nil {
		b.Fatal(err)
	}
	rss0, m0 := t.sample(b)
	t.open(b, idleSessions)
	time.Sleep(500 * time.Millisecond)
	rss1, m1 := t.sample(b)
	if _, parks := m1["parked"]; parks {
		// A passgate that parks idle relays (relay.Parker): the
		// sessions are idle once both directions of each are parked.
		want := float64(2 * len(t.conns))
		for deadline := time.Now().Add(patience); m1["parked"] < want; rss1, m1 = t.sample(b) {
			if time.Now().After(deadline) {
				b.Fatalf("%s: %v of %v directions parked", t.name, m1["parked"], want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	settled1, ms := t.settle(b)
	f1, err := fileRSSKiB(t.pid)
	if err != nil {
		b.Fatal(err)
	}
	// What the Go runtime has taken from the system and not given back
	// (its heap, stacks and metadata); the rest of the anonymous memory
	// is C-style allocations outside the Go heap (the SQLite driver's).
	goReady := func(m map[string]float64) float64 {
		return (m["go_memstats_sys_bytes"] - m["go_memstats_heap_released_bytes"]) / 1024
	}
	g0, g1 := goReady(ms0), goReady(ms)
	if path := os.Getenv("PASSGATE_BENCH_HEAPPROFILE"); path != "" {
		writeHeapProfile(b, fmt.Sprintf("%s.%s.%s", path, t.upstreamTLS, t.name))
	}
	per := func(name string, unit float64) float64 { return (m1[name] - m0[name]) / unit / idleSessions }
	if os.Getenv("PASSGATE_BENCH_MEMSTATS") != "" {
		// Every go_memstats gauge's settled growth per session, to say
		// what the Go runtime's part of the resident set is made of.
		names := make([]string, 0, len(ms))
		for name := range ms {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			if strings.HasSuffix(name, "_bytes") {
				fmt.Printf("%s %s: %+.1f KiB/session settled\n", t.name, name, (ms[name]-ms0[name])/1024/idleSessions)
			}
		}
	}
	t.rows = append(t.rows, idleFigures{
		rssKiB:      float64(rss1-rss0) / idleSessions,
		settledKiB:  float64(settled1-settled0) / idleSessions,
		heapSettled: (ms["go_memstats_heap_inuse_bytes"] - m0["go_memstats_heap_inuse_bytes"]) / 1024 / idleSessions,
		liveSettled: (ms["go_memstats_heap_alloc_bytes"] - m0["go_memstats_heap_alloc_bytes"]) / 1024 / idleSessions,
		goKiB:       (g1 - g0) / idleSessions,
		fileKiB:     float64(f1-f0) / idleSessions,
		otherKiB:    (float64(settled1-settled0) - float64(f1-f0) - (g1 - g0)) / idleSessions,
		heapKiB:     per("go_memstats_heap_inuse_bytes", 1024),
		stackKiB:    per("go_memstats_stack_inuse_bytes", 1024),
		goroutines:  per("go_goroutines", 1),
		rssTotal:    rss1,
	})
	t.closeAll()
}

// writeHeapProfile writes the heap profile of the test process, after a
// collection, to path: with PASSGATE_BENCH_INPROCESS it holds the idle
// sessions of passgate (and those of the benchmark's own clients, apart by
// their stacks).
func writeHeapProfile(b *testing.B, path string) {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func benchIdleMemory(b *testing.B, upstreamTLS string) {
	bin := os.Getenv("PASSGATE_BENCH_BINARY")
	switch {
	case os.Getenv("PASSGATE_BENCH_INPROCESS") != "":
		bin = ""
		if os.Getenv("PASSGATE_BENCH_HEAPPROFILE") != "" {
			// Every allocation from here on, not one per 512 KiB.
			defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
			runtime.MemProfileRate = 1
		}
	case bin == "":
		bin = passgateBinary(b)
	}
	targets := []*idleTarget{startIdleTarget(b, "passgate", bin, upstreamTLS)}
	base := os.Getenv("PASSGATE_BENCH_BASELINE_BIN")
	if base == "" {
		base = os.Getenv("PASSGATE_BENCH_BASELINE")
	}
	if base != "" {
		targets = append(targets, startIdleTarget(b, "baseline", base, upstreamTLS))
	}
	load0 := loadAvg()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := range targets {
			targets[(i+k)%len(targets)].measure(b)
		}
	}
	b.StopTimer()
	var out strings.Builder
	fmt.Fprintf(&out, "IMAP idle sessions (implicit TLS, LOGIN, SELECT, IDLE), upstream TLS %s, %d sessions, %d round(s); GOGC %q, GOMEMLIMIT %q; load %s before, %s after\n",
		upstreamTLS, idleSessions, b.N, os.Getenv("PASSGATE_BENCH_GOGC"), os.Getenv("PASSGATE_BENCH_GOMEMLIMIT"), load0, loadAvg())
	fmt.Fprintf(&out, "| binary | RSS KiB/session settled | heap in use KiB/session settled | heap objects KiB/session settled | settled: Go runtime's memory / files / the rest, KiB/session | RSS KiB/session at 0.5 s | heap in use KiB/session | stacks KiB/session | goroutines/session | RSS total KiB |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, t := range targets {
		for _, r := range t.rows {
			fmt.Fprintf(&out, "| %s | %.1f | %.1f | %.1f | %.1f / %.1f / %.1f | %.1f | %.1f | %.1f | %.2f | %d |\n", t.name, r.settledKiB, r.heapSettled, r.liveSettled, r.goKiB, r.fileKiB, r.otherKiB, r.rssKiB, r.heapKiB, r.stackKiB, r.goroutines, r.rssTotal)
		}
		var sum float64
		for _, r := range t.rows {
			sum += r.settledKiB
		}
		b.ReportMetric(sum/float64(len(t.rows)), t.name+"-KiB/session")
	}
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Print(out.String())
}
