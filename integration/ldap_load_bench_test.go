package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/cmd/passgate/cli"
	"github.com/passgate/passgate/integration/testenv"
)

// Load of BenchmarkLDAPLoad: loadWorkers clients at once over loadUsers
// users, each user with an app password and MFA enforced (so that the
// app password is the only way in).
const (
	loadWorkers = 8
	loadUsers   = 100
	loadRounds  = 4
)

// loadTarget is one way to the directory: slapd itself, or a passgate
// serve process in front of it.
type loadTarget struct {
	name string
	url  string
	pid  int      // the passgate process; 0 for slapd itself or passgate in this process
	gate bool     // not slapd itself: passgate (or the bare relay)
	dn   []string // bind DN of user i
	pw   []string // what user i binds with: the primary password directly, the app password through passgate
}

// loadFigures adds up one target's rounds of one scenario.
type loadFigures struct {
	ops          int64
	elapsed      time.Duration
	gateTicks    int64 // utime+stime of the passgate process, in clock ticks
	slapdTicks   int64
	latencies    []time.Duration
	failedRounds int
	// With PASSGATE_LDAP_LOAD_PERF set: perf stat's counts of
	// perfEvents in the passgate process and in slapd, summed over the
	// rounds.
	gatePerf, slapdPerf []float64
}

// BenchmarkLDAPLoad loads LDAP the way a directory is loaded in
// production: loadWorkers workers at once over loadUsers users, each
// bind with the user's app password through passgate (a "passgate
// serve" process built from this tree, SQLite store, plaintext from a
// trusted network, upstream slapd in plaintext) and with the user's
// primary password directly to slapd (userPassword in {SSHA}, as
// slappasswd writes it). Each scenario runs loadRounds rounds per
// target, the targets taking turns in a rotating order, so that all see
// the same machine load; each round lasts PASSGATE_LDAP_LOAD_ROUND
// (default 2s).
//
//   - new-conn: dial, bind, unbind: one bind per connection;
//   - one-conn: each worker binds again and again on one connection,
//     over the users in turn;
//   - search: each worker binds once, then reads its user's own entry
//     (base search, two attributes); the figure is the median latency;
//   - search-1: the same with one worker, the latency without queueing
//     for the machine's CPUs.
//
// CPU per operation is read from /proc/PID/stat (utime+stime) of the
// passgate process and of slapd before and after each round: the client
// (this process) is not counted. With PASSGATE_BENCH_BASELINE_BIN set to
// another passgate binary (an older build), it runs as a third target
// in the same rotation, so that before and after are measured side by
// side. PASSGATE_LDAP_LOAD_SCENARIOS=search,search-1 runs only the
// scenarios named; each passgate process's ID is printed at the start,
// for perf or strace attached during a round.
// PASSGATE_LDAP_LOAD_GATE_GOMAXPROCS=N runs the passgate processes (not
// the client) with GOMAXPROCS=N. PASSGATE_LDAP_LOAD_PERF=1 counts, with
// perf stat attached for each round, the system calls (all, and those of
// perfEvents by name) and context switches per operation of the passgate
// process and of slapd.
//
//	go test ./integration -run '^$' -bench LDAPLoad -benchtime 1x
func BenchmarkLDAPLoad(b *testing.B) {
	e := ldapEnv(b)
	round := 2 * time.Second
	if v := os.Getenv("PASSGATE_LDAP_LOAD_ROUND"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("PASSGATE_LDAP_LOAD_ROUND: %v", err)
		}
		round = d
	}
	slapdPID := slapdProcess(b, e.slapd)
	users, primary := addLoadUsers(b, e.slapd)

	direct := &loadTarget{name: "direct", url: e.slapd.URL}
	for i, u := range users {
		direct.dn = append(direct.dn, e.slapd.UserDN(u))
		direct.pw = append(direct.pw, primary[i])
	}
	targets := []*loadTarget{direct}
	if os.Getenv("PASSGATE_LDAP_LOAD_INPROC") == "" {
		targets = append(targets, startLoadGate(b, e, "passgate", passgateBinary(b), users))
	}
	if bin := os.Getenv("PASSGATE_BENCH_BASELINE_BIN"); bin != "" {
		targets = append(targets, startLoadGate(b, e, "passgate-base", bin, users))
	}
	if os.Getenv("PASSGATE_LDAP_LOAD_TCPRELAY") != "" {
		// What any proxy hop costs: bytes copied both ways, no LDAP.
		relay := &loadTarget{name: "tcp-relay", url: "ldap://" + tcpRelay(b, strings.TrimPrefix(e.slapd.URL, "ldap://")), dn: direct.dn, pw: direct.pw, gate: true}
		targets = append(targets, relay)
	}
	if os.Getenv("PASSGATE_LDAP_LOAD_INPROC") != "" {
		// For -cpuprofile, instead of the process: "passgate serve" in
		// this process (its CPU, shared with the client, is not
		// reported).
		targets = append(targets, startLoadGate(b, e, "passgate-inproc", "", users))
	}

	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("loadavg before: %s\n", strings.TrimSpace(string(load)))
	}
	// For perf or strace attached from outside during a round.
	fmt.Printf("slapd: process %d\n", slapdPID)
	for _, t := range targets {
		if t.pid != 0 {
			fmt.Printf("%s: process %d\n", t.name, t.pid)
		}
	}
	only := map[string]bool{}
	for _, name := range strings.Split(os.Getenv("PASSGATE_LDAP_LOAD_SCENARIOS"), ",") {
		if name != "" {
			only[name] = true
		}
	}
	for _, sc := range []struct {
		name    string
		workers int
		run     func(t *loadTarget, stop <-chan struct{}, worker int, f *loadWorkerFigures) error
	}{
		{"new-conn", loadWorkers, loadNewConn},
		{"one-conn", loadWorkers, loadOneConn},
		{"search", loadWorkers, loadSearch},
		{"search-1", 1, loadSearch}, // latency without queueing for the CPU
	} {
		if len(only) > 0 && !only[sc.name] {
			continue
		}
		figs := make([]loadFigures, len(targets))
		for r := 0; r < loadRounds; r++ {
			for k := range targets {
				i := (k + r) % len(targets)
				t := targets[i]
				f := &figs[i]
				var gatePerf, slapdPerf func() []float64
				if os.Getenv("PASSGATE_LDAP_LOAD_PERF") != "" {
					gatePerf, slapdPerf = startPerfStat(b, t.pid), startPerfStat(b, slapdPID)
				}
				gate0, slapd0 := procTicks(t.pid), procTicks(slapdPID)
				ops, lat, took, err := loadRound(t, sc.workers, sc.run, round)
				if gatePerf != nil {
					f.gatePerf = addCounts(f.gatePerf, gatePerf())
					f.slapdPerf = addCounts(f.slapdPerf, slapdPerf())
				}
				if err != nil {
					b.Logf("%s %s round %d: %v", sc.name, t.name, r, err)
					f.failedRounds++
				}
				f.gateTicks += procTicks(t.pid) - gate0
				f.slapdTicks += procTicks(slapdPID) - slapd0
				f.ops += ops
				f.elapsed += took
				f.latencies = append(f.latencies, lat...)
			}
		}
		loadReport(b, sc.name, targets, figs)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("loadavg after: %s\n", strings.TrimSpace(string(load)))
}

// loadReport logs one scenario's line per target: ops/s, the ratio to
// direct, the median latency and CPU per operation of passgate and of
// slapd.
func loadReport(b *testing.B, scenario string, targets []*loadTarget, figs []loadFigures) {
	b.Helper()
	const tick = 10 * time.Millisecond // USER_HZ: 100 on Linux
	var directRate float64
	var directMedian time.Duration
	for i, t := range targets {
		f := figs[i]
		if f.failedRounds > 0 || f.ops == 0 {
			b.Errorf("%s %s: %d failed rounds, %d operations", scenario, t.name, f.failedRounds, f.ops)
			continue
		}
		rate := float64(f.ops) / f.elapsed.Seconds()
		sort.Slice(f.latencies, func(a, c int) bool { return f.latencies[a] < f.latencies[c] })
		median, p99 := f.latencies[len(f.latencies)/2], f.latencies[len(f.latencies)*99/100]
		perOp := func(ticks int64, measured bool) string {
			if !measured {
				return "   -"
			}
			return fmt.Sprintf("%4.0f", float64(ticks)*float64(tick/time.Microsecond)/float64(f.ops))
		}
		if !t.gate {
			directRate, directMedian = rate, median
		}
		b.ReportMetric(rate, scenario+"-"+t.name+"-ops/s")
		// Printed rather than logged: a benchmark's log is cut at ten lines.
		fmt.Printf("%-9s %-14s %8.0f ops/s %5.2f× direct  median %7.3f ms (%4.2f× direct) p99 %6.1f ms  CPU/op: passgate %s µs, slapd %s µs\n",
			scenario, t.name, rate, rate/directRate, median.Seconds()*1000, median.Seconds()/directMedian.Seconds(), p99.Seconds()*1000,
			perOp(f.gateTicks, t.pid != 0), perOp(f.slapdTicks, true))
		for _, pc := range []struct {
			who    string
			counts []float64
		}{{"passgate", f.gatePerf}, {"slapd", f.slapdPerf}} {
			if len(pc.counts) == 0 {
				continue
			}
			line := fmt.Sprintf("%-9s %-14s per op, %-8s: system calls %.1f (", scenario, t.name, pc.who, pc.counts[0]/float64(f.ops))
			for k := 2; k < len(perfEvents); k++ {
				line += fmt.Sprintf("%s%s %.2f", map[bool]string{true: "", false: ", "}[k == 2], strings.TrimPrefix(perfEvents[k], "syscalls:sys_enter_"), pc.counts[k]/float64(f.ops))
			}
			line += fmt.Sprintf("), context switches %.2f", pc.counts[1]/float64(f.ops))
			fmt.Println(line)
		}
	}
}

// perfEvents are the events that PASSGATE_LDAP_LOAD_PERF counts: system
// calls (all of them), context switches, then some system calls by name.
var perfEvents = []string{
	"raw_syscalls:sys_enter", "context-switches",
	"syscalls:sys_enter_read", "syscalls:sys_enter_write", "syscalls:sys_enter_epoll_pwait",
	"syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_futex",
	"syscalls:sys_enter_nanosleep", "syscalls:sys_enter_sched_yield",
}

// startPerfStat attaches perf stat to process pid (a no-op for pid 0)
// and returns the function that stops it and returns its counts of
// perfEvents.
func startPerfStat(b *testing.B, pid int) func() []float64 {
	b.Helper()
	if pid == 0 {
		return func() []float64 { return nil }
	}
	out := filepath.Join(b.TempDir(), "perf.csv")
	cmd := exec.Command("perf", "stat", "-x,", "-o", out, "-e", strings.Join(perfEvents, ","), "-p", strconv.Itoa(pid))
	if err := cmd.Start(); err != nil {
		b.Fatalf("perf stat (PASSGATE_LDAP_LOAD_PERF): %v", err)
	}
	time.Sleep(100 * time.Millisecond) // attached before the round starts
	return func() []float64 {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		raw, err := os.ReadFile(out)
		if err != nil {
			b.Fatalf("perf stat output: %v", err)
		}
		counts := make([]float64, len(perfEvents))
		for _, line := range strings.Split(string(raw), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 {
				continue
			}
			for k, ev := range perfEvents {
				if f[2] == ev {
					counts[k], _ = strconv.ParseFloat(f[0], 64)
				}
			}
		}
		return counts
	}
}

// addCounts adds b to a, element by element.
func addCounts(a, b []float64) []float64 {
	if a == nil {
		a = make([]float64, len(b))
	}
	for k := range b {
		a[k] += b[k]
	}
	return a
}

// loadWorkerFigures is one worker's count and latencies in a round.
type loadWorkerFigures struct {
	ops       int64
	latencies []time.Duration
}

// loadRound runs workers workers of one scenario against t for d.
func loadRound(t *loadTarget, workers int, run func(*loadTarget, <-chan struct{}, int, *loadWorkerFigures) error, d time.Duration) (int64, []time.Duration, time.Duration, error) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	figs := make([]loadWorkerFigures, workers)
	errs := make([]error, workers)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = run(t, stop, w, &figs[w])
		}()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	took := time.Since(start)
	var ops int64
	var lat []time.Duration
	for w := range figs {
		ops += figs[w].ops
		lat = append(lat, figs[w].latencies...)
	}
	for _, err := range errs {
		if err != nil {
			return ops, lat, took, err
		}
	}
	return ops, lat, took, nil
}

func stopped(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// loadNewConn: dial, bind, unbind, with users in turn.
func loadNewConn(t *loadTarget, stop <-chan struct{}, w int, f *loadWorkerFigures) error {
	for u := w; !stopped(stop); u = (u + loadWorkers) % loadUsers {
		began := time.Now()
		l, err := ldap.DialURL(t.url)
		if err != nil {
			return err
		}
		err = l.Bind(t.dn[u], t.pw[u])
		l.Close()
		if err != nil {
			return fmt.Errorf("bind %s: %w", t.dn[u], err)
		}
		f.latencies = append(f.latencies, time.Since(began))
		f.ops++
	}
	return nil
}

// loadOneConn: binds on one connection, with users in turn.
func loadOneConn(t *loadTarget, stop <-chan struct{}, w int, f *loadWorkerFigures) error {
	l, err := ldap.DialURL(t.url)
	if err != nil {
		return err
	}
	defer l.Close()
	for u := w; !stopped(stop); u = (u + loadWorkers) % loadUsers {
		began := time.Now()
		if err := l.Bind(t.dn[u], t.pw[u]); err != nil {
			return fmt.Errorf("bind %s: %w", t.dn[u], err)
		}
		f.latencies = append(f.latencies, time.Since(began))
		f.ops++
	}
	return nil
}

// loadSearch: one bind, then base searches of the user's own entry.
func loadSearch(t *loadTarget, stop <-chan struct{}, w int, f *loadWorkerFigures) error {
	l, err := ldap.DialURL(t.url)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Bind(t.dn[w], t.pw[w]); err != nil {
		return fmt.Errorf("bind %s: %w", t.dn[w], err)
	}
	req := ldap.NewSearchRequest(t.dn[w], ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"mail", "cn"}, nil)
	for !stopped(stop) {
		began := time.Now()
		r, err := l.Search(req)
		if err != nil {
			return fmt.Errorf("search %s: %w", t.dn[w], err)
		}
		if len(r.Entries) != 1 || r.Entries[0].GetAttributeValue("mail") == "" {
			return fmt.Errorf("search %s: %d entries, want 1 with mail", t.dn[w], len(r.Entries))
		}
		f.latencies = append(f.latencies, time.Since(began))
		f.ops++
	}
	return nil
}

// tcpRelay listens on a free port and copies bytes between each client
// and a new connection to addr, until the benchmark ends.
func tcpRelay(b *testing.B, addr string) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// procTicks returns utime+stime of process pid in clock ticks (0 for
// pid 0).
func procTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields count from its ")".
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64) // field 14 of the line
	st, _ := strconv.ParseInt(fields[12], 10, 64) // field 15
	return ut + st
}

// slapdProcess reads slapd's process ID from its pidfile.
func slapdProcess(b *testing.B, s *testenv.Slapd) int {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join(s.Dir, "slapd.pid"))
	if err != nil {
		b.Fatalf("slapd pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		b.Fatalf("slapd pidfile %q: %v", raw, err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
		b.Fatalf("slapd process: %v", err)
	}
	return pid
}

// addLoadUsers adds loadUsers people to slapd (once per test binary),
// each with a random primary password stored as {SSHA}, and returns
// their uids and passwords.
func addLoadUsers(b *testing.B, s *testenv.Slapd) ([]string, []string) {
	b.Helper()
	l, err := ldap.DialURL(s.URL)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if err := l.Bind(s.AdminDN, s.AdminPassword); err != nil {
		b.Fatal(err)
	}
	var users, pws []string
	for i := 0; i < loadUsers; i++ {
		uid := fmt.Sprintf("load%03d", i)
		pw := rand.Text()
		salt := make([]byte, 8)
		rand.Read(salt)
		sum := sha1.Sum(append([]byte(pw), salt...))
		ssha := "{SSHA}" + base64.StdEncoding.EncodeToString(append(sum[:], salt...))
		dn := s.UserDN(uid)
		add := ldap.NewAddRequest(dn, nil)
		add.Attribute("objectClass", []string{"inetOrgPerson"})
		add.Attribute("uid", []string{uid})
		add.Attribute("cn", []string{"Load " + uid})
		add.Attribute("sn", []string{"Load"})
		add.Attribute("mail", []string{uid + "@example.test"})
		add.Attribute("userPassword", []string{ssha})
		if err := l.Add(add); ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			mod := ldap.NewModifyRequest(dn, nil)
			mod.Replace("userPassword", []string{ssha})
			err = l.Modify(mod)
			if err != nil {
				b.Fatalf("reset password of %s: %v", dn, err)
			}
		} else if err != nil {
			b.Fatalf("add %s: %v", dn, err)
		}
		users, pws = append(users, uid), append(pws, pw)
	}
	return users, pws
}

// startLoadGate runs bin ("": this process) as "passgate serve" with its own SQLite store in
// which every user has MFA enforced and one app password, LDAP in relay
// mode in front of slapd (plaintext; 127.0.0.0/8 trusted).
func startLoadGate(b *testing.B, e *ldapServers, name, bin string, users []string) *loadTarget {
	b.Helper()
	dir := b.TempDir()
	dbFile, keyFile := filepath.Join(dir, "passgate.db"), filepath.Join(dir, "passgate.key")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, store.Options{Driver: store.DriverSQLite, DSN: dbFile, KeyFile: keyFile})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	t := &loadTarget{name: name, gate: true}
	for _, u := range users {
		if _, err := st.SetMFA(ctx, u, store.MFAEnforced); err != nil {
			b.Fatal(err)
		}
		_, secret, err := st.CreateAppPassword(ctx, store.NewAppPassword{User: u, Label: "load", Scopes: []string{"ldap"}})
		if err != nil {
			b.Fatal(err)
		}
		t.dn = append(t.dn, e.slapd.UserDN(u))
		t.pw = append(t.pw, strings.ReplaceAll(secret, " ", ""))
	}
	st.Close()
	secretFile := filepath.Join(dir, "ldap.secret")
	if err := os.WriteFile(secretFile, []byte(e.slapd.ServicePassword+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	port, err := testenv.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := fmt.Sprintf(`store:
  driver: sqlite
  dsn: %q
key_file: %q
policy:
  failure_delay: 200ms
  trusted_networks: ["127.0.0.0/8"]
ldap:
  listen: %q
  mode: relay
  user_dn_templates: [%q]
  upstream:
    url: %q
    tls: none
    service_dn: %q
    service_password_file: %q
`, dbFile, keyFile, addr, e.slapd.UserTemplate, e.slapd.URL, e.slapd.ServiceDN, secretFile)
	cfgFile := filepath.Join(dir, "passgate.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "passgate.log"))
	if err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	stop := func() {}
	if bin == "" {
		sctx, scancel := context.WithCancel(context.Background())
		go func() { cli.Run(sctx, []string{"serve", "--config", cfgFile}, logFile, logFile); close(exited) }()
		stop = scancel
	} else {
		cmd := exec.Command(bin, "serve", "--config", cfgFile)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if n := os.Getenv("PASSGATE_LDAP_LOAD_GATE_GOMAXPROCS"); n != "" {
			cmd.Env = append(os.Environ(), "GOMAXPROCS="+n) // the passgate processes only, not the client
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		go func() { cmd.Wait(); close(exited) }()
		stop = func() { cmd.Process.Signal(syscall.SIGTERM) }
		t.pid = cmd.Process.Pid
	}
	b.Cleanup(func() {
		stop()
		select {
		case <-exited:
		case <-time.After(patience):
			b.Errorf("%s serve did not stop within %v", name, patience)
		}
		logFile.Close()
	})
	for deadline := time.Now().Add(patience); !dialable(addr); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			out, _ := os.ReadFile(logFile.Name())
			b.Fatalf("%s serve exited during start:\n%s", name, tail(string(out), 40))
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s serve does not listen on %s", name, addr)
		}
	}
	t.url = "ldap://" + addr
	// Every user binds once, so that no round pays for a first use.
	for i := range t.dn {
		l, err := ldap.DialURL(t.url)
		if err != nil {
			b.Fatal(err)
		}
		err = l.Bind(t.dn[i], t.pw[i])
		l.Close()
		if err != nil {
			out, _ := os.ReadFile(logFile.Name())
			b.Fatalf("%s: first bind of %s: %v\n%s", name, t.dn[i], err, tail(string(out), 20))
		}
	}
	return t
}
