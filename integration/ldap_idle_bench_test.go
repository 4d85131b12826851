package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// ldapIdleConns is how many bound, idle connections BenchmarkLDAPIdleConnMemory
// holds open per target.
const ldapIdleConns = 200

// BenchmarkLDAPIdleConnMemory measures what a bound LDAP connection that
// then sits idle costs: the way SSSD on every workstation, or an
// application's connection pool, keeps its connections to the directory.
// Through passgate (relay mode, in process, assembled as serve wires it;
// plaintext from a trusted network), ldapIdleConns clients each bind
// with alice's app password and wait; after two collections, the growth
// of passgate's goroutines, goroutine stacks and heap in use per
// connection (the test's clients are plain sockets: a few hundred bytes of
// the heap figure are theirs). Directly, the same number of connections
// bind to slapd with alice's primary password, and the growth of slapd's
// resident set per connection is read from /proc.
// PASSGATE_BENCH_HEAPPROFILE=FILE writes the heap profile with passgate's
// connections open to FILE.ldap (go tool pprof -sample_index=inuse_space;
// with -memprofilerate 1 every allocation is recorded).
//
//	go test ./integration -run '^$' -bench LDAPIdleConnMemory -benchtime 1x
func BenchmarkLDAPIdleConnMemory(b *testing.B) {
	e, g, app, dn := benchLDAPAlice(b, "idle")
	slapdAddr := strings.TrimPrefix(e.slapd.URL, "ldap://")

	// open binds n connections to addr and leaves them open.
	open := func(addr, pw string, n int) []net.Conn {
		conns := make([]net.Conn, 0, n)
		for i := range n {
			c, err := net.DialTimeout("tcp", addr, patience)
			if err != nil {
				b.Fatalf("%s: connection %d: %v", addr, i, err)
			}
			c.SetDeadline(time.Now().Add(patience))
			if _, err := c.Write(ldapMessage(1, ldapBindOp(dn, pw))); err != nil {
				b.Fatalf("%s: bind %d: %v", addr, i, err)
			}
			resp, err := ber.ReadPacket(bufio.NewReader(c))
			if err != nil {
				b.Fatalf("%s: bind %d: %v", addr, i, err)
			}
			if code := ldapResultCode(resp); code != 0 {
				b.Fatalf("%s: bind %d: result code %d", addr, i, code)
			}
			c.SetDeadline(time.Time{})
			conns = append(conns, c)
		}
		return conns
	}
	closeAll := func(conns []net.Conn) {
		for _, c := range conns {
			c.Close()
		}
	}
	type inProc struct{ goroutines, heapInuse, heapAlloc, stacks float64 }
	sample := func() inProc {
		// Live memory: the idle goroutines' stacks shrink at collections.
		for range 4 {
			runtime.GC()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return inProc{float64(runtime.NumGoroutine()), float64(m.HeapInuse), float64(m.HeapAlloc), float64(m.StackInuse)}
	}
	// waitGoroutines waits until the goroutine count has stopped moving
	// (the sessions have settled after their binds).
	waitGoroutines := func() {
		last, stable := -1, 0
		for deadline := time.Now().Add(patience); stable < 5; time.Sleep(100 * time.Millisecond) {
			n := runtime.NumGoroutine()
			if n == last {
				stable++
			} else {
				stable = 0
			}
			last = n
			if time.Now().After(deadline) {
				b.Fatalf("the goroutine count did not settle (last %d)", n)
			}
		}
	}

	var pass, direct []float64 // per round: passgate's figures, slapd's KiB
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		warm := open(g.addr, app, 10) // code paths, pools, the upstream's first connections
		waitGoroutines()
		before := sample()
		conns := open(g.addr, app, ldapIdleConns)
		waitGoroutines()
		after := sample()
		if path := os.Getenv("PASSGATE_BENCH_HEAPPROFILE"); path != "" {
			writeHeapProfile(b, path+".ldap")
		}
		per := func(a, b float64) float64 { return (a - b) / ldapIdleConns }
		pass = append(pass, per(after.goroutines, before.goroutines), per(after.stacks, before.stacks)/1024,
			per(after.heapInuse, before.heapInuse)/1024, per(after.heapAlloc, before.heapAlloc)/1024)
		closeAll(conns)
		closeAll(warm)

		warm = open(slapdAddr, e.slapd.Users["alice"], 10)
		time.Sleep(500 * time.Millisecond)
		rss0, err := rssKiB(e.slapd.Pid())
		if err != nil {
			b.Fatal(err)
		}
		conns = open(slapdAddr, e.slapd.Users["alice"], ldapIdleConns)
		time.Sleep(500 * time.Millisecond)
		rss1, err := rssKiB(e.slapd.Pid())
		if err != nil {
			b.Fatal(err)
		}
		direct = append(direct, float64(rss1-rss0)/ldapIdleConns)
		closeAll(conns)
		closeAll(warm)
	}
	b.StopTimer()
	var out strings.Builder
	fmt.Fprintf(&out, "LDAP idle bound connections, %d per target, %d round(s)\n", ldapIdleConns, b.N)
	fmt.Fprintf(&out, "| target | goroutines/conn | stacks KiB/conn | heap in use KiB/conn | heap objects KiB/conn | resident set KiB/conn |\n|---|---|---|---|---|---|\n")
	for r := 0; r < b.N; r++ {
		p := pass[4*r:]
		fmt.Fprintf(&out, "| passgate (in process, live) | %.2f | %.1f | %.1f | %.1f | — |\n", p[0], p[1], p[2], p[3])
		fmt.Fprintf(&out, "| slapd directly | — | — | — | — | %.1f |\n", direct[r])
	}
	b.ReportMetric(pass[1]+pass[2], "passgate-KiB/conn")
	b.ReportMetric(direct[0], "slapd-KiB/conn")
	// On standard output: go test cuts a benchmark's log to a few lines.
	fmt.Fprint(os.Stdout, out.String())
}

// ldapResultCode returns the result code of an LDAP response message, or
// -1 when it has none.
func ldapResultCode(p *ber.Packet) int64 {
	if len(p.Children) < 2 || len(p.Children[1].Children) < 1 {
		return -1
	}
	code, ok := p.Children[1].Children[0].Value.(int64)
	if !ok {
		return -1
	}
	return code
}
