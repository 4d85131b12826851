package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// twoInstances starts two passgate instances on one PostgreSQL database
// with one server key, as behind a balancer.
func twoInstances(t *testing.T) (a, b *passgateInstance) {
	t.Helper()
	ps := instances(t, 2, passgateConfig{})
	return ps[0], ps[1]
}

// instances starts n passgate instances configured as pc on one
// PostgreSQL database with one server key.
func instances(t *testing.T, n int, pc passgateConfig) []*passgateInstance {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopPG)
	name := fmt.Sprintf("passgate_two_%d_%d", os.Getpid(), time.Now().UnixNano())
	dsn, err := testenv.CreateDatabase(ctx, base, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.DropDatabase(context.Background(), base, name) })
	pc.postgresDSN = dsn
	ps := []*passgateInstance{startPassgate(t, pc)}
	pc.keyFile = filepath.Join(ps[0].dir, "passgate.key")
	for len(ps) < n {
		ps = append(ps, startPassgate(t, pc))
	}
	return ps
}

// TestInstancesShareRevocationAndLockout: two instances on one
// PostgreSQL. Deleting an app password through one closes its live
// session on the other as PostgreSQL announces it (LISTEN/NOTIFY, not the
// polling fallback), and failures spread over both lock the source as if
// one had seen them.
func TestInstancesShareRevocationAndLockout(t *testing.T) {
	a, b := twoInstances(t)
	a.enforce(t, "alice")
	pw := a.appPassword(t, "alice", "tablet")
	c := b.dial(t, false, "", nil)
	if err := c.Login("alice", pw).Wait(); err != nil {
		t.Fatalf("LOGIN through the second instance: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	a.admin(t, "app-password", "delete", "alice", "--label", "tablet")
	start := time.Now()
	select {
	case <-c.Closed():
		t.Logf("the live session on the other instance closed %v after the deletion", time.Since(start).Round(time.Microsecond))
	case <-time.After(patience):
		t.Fatalf("the session opened with a deleted app password is still open after %v", patience)
	}
	if !eventually(patience, func() bool { return strings.Contains(b.out.String(), "app password deletion announced") }) {
		t.Errorf("the second instance did not hear of the deletion through LISTEN/NOTIFY:\n%s", b.out.String())
	}

	// Failures spread over both instances: 10 distinct guesses (the
	// default max_failures) lock the pair on both.
	pw2 := a.appPassword(t, "alice", "phone")
	uniform := "a " + uniformFailure + "\r\n"
	for i := range 10 {
		p := []*passgateInstance{a, b}[i%2]
		if got := p.rawLoginFrom(t, "127.0.0.61", "alice", "guess-"+strconv.Itoa(i)); got != uniform {
			t.Fatalf("guess %d: %q", i, got)
		}
	}
	for _, p := range []*passgateInstance{a, b} {
		if got := p.rawLoginFrom(t, "127.0.0.61", "alice", pw2); got != uniform {
			t.Fatalf("the right app password from the pair that failed 10 times over two instances: %q", got)
		}
	}
	if got := b.rawLoginFrom(t, "127.0.0.62", "alice", pw2); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("alice from another address: %q", got)
	}
}

// guideHAProxy starts Debian's HAProxy with configs/haproxy.cfg, the file
// the deployment guide ships, in front of ps: only addresses change. Each
// "bind :PORT" gets a free loopback port; each "server pgN HOST:PORT" is
// the N-th instance's listener for that port (IMAP on 143 and 993; the
// instances run no SMTP or LDAP listener, so those servers point at a
// closed port) with its health check on that instance's metrics port;
// instances beyond those the file lists get a copy of its last server
// line. It returns HAProxy and the address of each frontend by name.
func guideHAProxy(t *testing.T, ps []*passgateInstance) (*testenv.HAProxy, map[string]string) {
	t.Helper()
	src, err := os.ReadFile("../configs/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	closed := deadAddr(t)
	byPort := func(p *passgateInstance, port string) string {
		switch port {
		case "143":
			return p.imapAddr
		case "993":
			return p.imapsAddr
		}
		return closed
	}
	server := regexp.MustCompile(`^(\s*server pg)(\d+) \S+:(\d+)(.*)$`)
	var out []string
	front := map[string]string{}
	var frontend, lastServer string
	servers := 0
	flush := func() {
		if lastServer == "" {
			return
		}
		m := server.FindStringSubmatch(lastServer)
		for n := servers; n < len(ps); n++ {
			out = append(out, fmt.Sprintf("%s%d %s%s port %s", m[1], n+1, byPort(ps[n], m[3]), m[4], portOf(t, ps[n].metrics)))
		}
		lastServer, servers = "", 0
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(src), "\n"), "\n") {
		f := strings.Fields(line)
		m := server.FindStringSubmatch(line)
		if m == nil {
			flush()
		}
		switch {
		case len(f) == 2 && f[0] == "frontend":
			frontend = f[1]
		case len(f) == 2 && f[0] == "bind" && strings.HasPrefix(f[1], ":"):
			port, err := testenv.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			front[frontend] = "127.0.0.1:" + strconv.Itoa(port)
			line = strings.Replace(line, f[1], front[frontend], 1)
		case m != nil:
			n, _ := strconv.Atoi(m[2])
			if n > len(ps) {
				continue
			}
			lastServer, servers = line, n
			line = fmt.Sprintf("%s%d %s%s port %s", m[1], n, byPort(ps[n-1], m[3]), m[4], portOf(t, ps[n-1].metrics))
		}
		out = append(out, line)
	}
	flush()
	for _, name := range []string{"imap", "imaps", "submission", "submissions", "ldap", "ldaps"} {
		if front[name] == "" {
			t.Fatalf("configs/haproxy.cfg has no frontend %q with a \"bind :PORT\" line", name)
		}
	}
	cfg := strings.Join(out, "\n") + "\n"
	if n := strings.Count(cfg, "server pg"); n != 6*len(ps) {
		t.Fatalf("configs/haproxy.cfg rewritten for %d instances has %d server lines, want %d:\n%s", len(ps), n, 6*len(ps), cfg)
	}
	var listen []string
	for _, a := range front {
		listen = append(listen, a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ha, err := testenv.StartHAProxyConfig(ctx, t.TempDir(), cfg, listen)
	if err != nil {
		t.Fatalf("%v\nconfiguration:\n%s", err, cfg)
	}
	t.Cleanup(ha.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("HAProxy output:\n%s", ha.Output())
		}
	})
	return ha, front
}

// portOf returns the port of host:port.
func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("instance address %q: %v", addr, err)
	}
	return port
}

// TestThreeInstancesBehindHAProxy: three instances on one PostgreSQL
// behind Debian's HAProxy configured with configs/haproxy.cfg, the
// guide's file (PROXY v2, round robin, health check on /readyz). A login works through
// any of them with the client's own address; deleting an app password
// through one closes its live sessions on all three; failures spread over
// the three lock the source as if one had seen them.
func TestThreeInstancesBehindHAProxy(t *testing.T) {
	ps := instances(t, 3, passgateConfig{trusted: []string{"127.0.0.1/32"}, proxies: []string{"127.0.0.1/32"}, metrics: true})
	_, front := guideHAProxy(t, ps)
	ps[0].enforce(t, "alice")
	pw := ps[1].appPassword(t, "alice", "phone")

	// The STARTTLS frontend greets through the PROXY header too.
	c, r, greeting := imapVia(t, front["imap"], "127.0.0.121", false)
	if !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("greeting on the imap frontend through HAProxy: %q", greeting)
	}
	fmt.Fprintf(c, "a CAPABILITY\r\n")
	if caps, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a OK") || !strings.Contains(strings.Join(caps, " "), "STARTTLS") {
		t.Fatalf("CAPABILITY on the imap frontend through HAProxy: %q %q", caps, got)
	}
	c.Close()

	// Three sessions, one on each instance (round robin), each logged in
	// with the client's address.
	type session struct {
		c net.Conn
		r *bufio.Reader
	}
	var live []session
	for i := range 3 {
		c, r, greeting := imapVia(t, front["imaps"], "127.0.0.121", true)
		if !strings.HasPrefix(greeting, "* OK") {
			t.Fatalf("greeting %d through HAProxy: %q", i, greeting)
		}
		fmt.Fprintf(c, "a LOGIN alice %q\r\nb SELECT INBOX\r\n", pw)
		if _, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("LOGIN %d through HAProxy: %q", i, got)
		}
		readTagged(t, r, "b")
		live = append(live, session{c, r})
	}
	for i, p := range ps {
		if !eventually(patience, func() bool { return strings.Contains(p.out.String(), `"remote_addr":"127.0.0.121:`) }) {
			t.Fatalf("instance %d saw no login from 127.0.0.121: HAProxy did not spread them, or the address was lost", i)
		}
	}
	ps[2].admin(t, "app-password", "delete", "alice", "--label", "phone")
	start := time.Now()
	for i, s := range live {
		s.c.SetReadDeadline(time.Now().Add(patience))
		for {
			if _, err := s.r.ReadString('\n'); err != nil {
				break // closed (after its BYE)
			}
		}
		if took := time.Since(start); took > patience {
			t.Fatalf("session %d still open %v after the deletion", i, took)
		}
	}
	t.Logf("the three live sessions (one per instance) closed within %v of the deletion", time.Since(start).Round(time.Millisecond))

	// 10 distinct wrong guesses spread over the three (the default
	// max_failures) lock the pair on every instance.
	pw2 := ps[0].appPassword(t, "alice", "tablet")
	for i := range 10 {
		c, r, _ := imapVia(t, front["imaps"], "127.0.0.122", true)
		fmt.Fprintf(c, "a LOGIN alice %q\r\n", "guess-"+strconv.Itoa(i))
		if _, got := readTagged(t, r, "a"); got != "a "+uniformFailure+"\r\n" {
			t.Fatalf("guess %d: %q", i, got)
		}
		c.Close()
	}
	for i := range 3 {
		c, r, _ := imapVia(t, front["imaps"], "127.0.0.122", true)
		fmt.Fprintf(c, "a LOGIN alice %q\r\n", pw2)
		if _, got := readTagged(t, r, "a"); got != "a "+uniformFailure+"\r\n" {
			t.Fatalf("the right app password from the locked source, attempt %d: %q", i, got)
		}
		c.Close()
	}
	c, r, _ = imapVia(t, front["imaps"], "127.0.0.123", true)
	fmt.Fprintf(c, "a LOGIN alice %q\r\n", pw2)
	if _, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("from another address: %q", got)
	}
}

// TestKillNineOneInstance: three instances run as processes behind
// HAProxy; one gets SIGKILL. Clients reconnect through the others, and
// every login that instance acknowledged and committed (its audit queue
// empty, within about the journal's flush window of 10 ms on a quiet
// machine, README) before the kill is in the audit trail.
func TestKillNineOneInstance(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "passgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/passgate")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ps := instances(t, 3, passgateConfig{binary: bin, trusted: []string{"127.0.0.1/32"}, proxies: []string{"127.0.0.1/32"}, metrics: true})
	_, front := guideHAProxy(t, ps)
	ps[0].enforce(t, "alice")
	pw := ps[0].appPassword(t, "alice", "phone")

	// Logins acknowledged by the instance about to die, straight to it.
	const acked = 20
	for i := range acked {
		if got := ps[1].rawLoginFrom(t, "127.0.0.131", "alice", pw); !strings.HasPrefix(got, "a OK") {
			t.Fatalf("login %d on the instance to be killed: %q", i, got)
		}
	}
	// A live session on it, through HAProxy.
	var victim net.Conn
	for range 3 {
		c, r, _ := imapVia(t, front["imaps"], "127.0.0.132", true)
		fmt.Fprintf(c, "a LOGIN alice %q\r\n", pw)
		readTagged(t, r, "a")
		if strings.Contains(ps[1].out.String(), `"remote_addr":"127.0.0.132:`) && victim == nil {
			victim = c
		}
	}
	if victim == nil {
		t.Fatal("no session through HAProxy reached the second instance")
	}
	// Before the kill, the instance has committed every login it
	// acknowledged: its audit queue (passgate_audit_queue_writes) is
	// empty. On a quiet machine that takes about the flush window (10 ms,
	// README); a busy one may take far longer, so the test waits for the
	// queue, not for a time.
	acknowledged := time.Now()
	if !eventually(patience, func() bool {
		_, body := curlGet(t, "http://"+ps[1].metrics+"/metrics")
		return metricValue(body, "passgate_audit_queue_writes") == 0
	}) {
		t.Fatalf("the instance to be killed still has audit writes queued %v after the last login", patience)
	}
	t.Logf("the instance to be killed committed its logins' audit %v after the last one", time.Since(acknowledged).Round(time.Millisecond))
	ps[1].kill9(t)
	victim.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadAll(victim); err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the killed instance's session: %v", err)
	}
	// The client reconnects: HAProxy sends it to the living ones.
	if !eventually(patience, func() bool {
		for range 3 {
			c, r, _ := imapVia(t, front["imaps"], "127.0.0.133", true)
			fmt.Fprintf(c, "a LOGIN alice %q\r\n", pw)
			_, got := readTagged(t, r, "a")
			c.Close()
			if !strings.HasPrefix(got, "a OK") {
				return false
			}
		}
		return true
	}) {
		t.Fatal("logins through HAProxy did not all succeed after one instance was killed")
	}
	out := ps[0].admin(t, "audit", "--user", "alice", "--json")
	if n := strings.Count(out, "imap:127.0.0.131:"); n < acked {
		t.Fatalf("the audit trail holds %d of the %d logins the killed instance acknowledged", n, acked)
	}
}

// haLogin logs in once through addr (TLS) from laddr and logs out; it
// returns the tagged LOGIN reply, or an error when the connection failed
// before it.
func haLogin(addr, laddr, user, pw string) (string, error) {
	d := &net.Dialer{Timeout: patience, LocalAddr: &net.TCPAddr{IP: net.ParseIP(laddr)}}
	c, err := tls.DialWithDialer(d, "tcp", addr, env.certs.ClientTLS())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(patience))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return "", err
	}
	fmt.Fprintf(c, "a LOGIN %s %q\r\nb LOGOUT\r\n", user, pw)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, "a ") {
			return l, nil
		}
	}
}

// TestSIGTERMUnderLoad: logins run through HAProxy to three instances
// while one gets SIGTERM. Its logged-in session goes on (the drain lets
// it finish), the process exits 0 once it has, and the load sees no
// refused login: HAProxy sends new connections to the others.
func TestSIGTERMUnderLoad(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "passgate")
	build := exec.Command("go", "build", "-o", bin, "./cmd/passgate")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ps := instances(t, 3, passgateConfig{binary: bin, trusted: []string{"127.0.0.1/32"}, proxies: []string{"127.0.0.1/32"}, metrics: true})
	ha, front := guideHAProxy(t, ps)
	ps[0].enforce(t, "alice")
	pw := ps[0].appPassword(t, "alice", "phone")

	// A logged-in session on the instance to be stopped.
	c, r, _ := imapVia(t, ps[1].imapsAddr, "127.0.0.142", true) // not 127.0.0.1: that is HAProxy, which sends a PROXY header
	fmt.Fprintf(c, "a LOGIN alice %q\r\nb SELECT INBOX\r\n", pw)
	if _, got := readTagged(t, r, "a"); !strings.HasPrefix(got, "a OK") {
		t.Fatalf("LOGIN: %q", got)
	}
	readTagged(t, r, "b")

	stop := make(chan struct{})
	type result struct{ ok, refused, broken int }
	results := make(chan result, 1)
	go func() {
		var res result
		defer func() { results <- res }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := haLogin(front["imaps"], "127.0.0.141", "alice", pw)
			switch {
			case err != nil:
				res.broken++ // a connection cut before its reply: the client retries
			case strings.HasPrefix(got, "a OK"):
				res.ok++
			default:
				res.refused++
			}
		}
	}()
	// Load on all three, then SIGTERM to one.
	if !eventually(patience, func() bool { return strings.Contains(ps[1].out.String(), `"remote_addr":"127.0.0.141:`) }) {
		t.Fatal("the load did not reach the second instance")
	}
	ps[1].proc.Process.Signal(syscall.SIGTERM)
	if !eventually(patience, func() bool { return strings.Contains(ps[1].out.String(), "shutting down") }) {
		t.Fatal("the instance did not start draining")
	}
	// The health check of configs/haproxy.cfg (GET /readyz) takes the
	// draining instance out of the balancer while its session goes on.
	if !eventually(patience, func() bool {
		return regexp.MustCompile(`passgate_imaps/pg2 is DOWN, reason: Layer7 wrong status, code: 503`).MatchString(ha.Output())
	}) {
		t.Fatalf("HAProxy did not mark the draining instance DOWN on its /readyz 503:\n%s", ha.Output())
	}
	// The session goes on during the drain, then ends itself.
	fmt.Fprintf(c, "n NOOP\r\n")
	if _, got := readTagged(t, r, "n"); !strings.HasPrefix(got, "n OK") {
		t.Fatalf("NOOP during the drain: %q", got)
	}
	fmt.Fprintf(c, "z LOGOUT\r\n")
	readTagged(t, r, "z")
	select {
	case code := <-ps[1].done:
		ps[1].done <- code
		if code != 0 {
			t.Fatalf("the drained instance exited %d, want 0", code)
		}
	case <-time.After(patience):
		t.Fatal("the instance did not exit once its last session ended")
	}
	// The load goes on through the others.
	n := strings.Count(ps[0].out.String(), `"decision":"success"`) + strings.Count(ps[2].out.String(), `"decision":"success"`)
	if !eventually(patience, func() bool {
		return strings.Count(ps[0].out.String(), `"decision":"success"`)+strings.Count(ps[2].out.String(), `"decision":"success"`) > n+5
	}) {
		t.Fatal("logins through HAProxy stopped after one instance drained")
	}
	close(stop)
	res := <-results
	t.Logf("load through HAProxy during the drain: %d logins succeeded, %d refused, %d connections cut before a reply", res.ok, res.refused, res.broken)
	if res.refused != 0 {
		t.Fatalf("%d logins were refused during the drain", res.refused)
	}
}
