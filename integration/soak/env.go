package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/passgate/passgate/integration/testenv"
)

// startTimeout bounds the start of every server and instance.
const startTimeout = 2 * time.Minute

// environment is what the load runs against.
type environment struct {
	certs     *testenv.Certs
	dovecot   *testenv.Dovecot
	postfix   *testenv.Postfix
	slapd     *testenv.Slapd
	haproxy   *testenv.HAProxy
	instances []*instance
	// appPasswords maps alice and carol to their app passwords.
	appPasswords map[string][]string
	stops        []func()
}

// stop stops everything that was started, last first.
func (e *environment) stop() {
	for i := len(e.stops) - 1; i >= 0; i-- {
		e.stops[i]()
	}
}

// enforcedUsers have MFA enforced and app passwords; targetUsers exist
// only in passgate's store (enforced), so that their wrong secrets never
// reach an upstream.
var (
	enforcedUsers = []string{"alice", "carol"}
	targetUsers   = []string{"target0", "target1", "target2", "target3", "target4", "target5", "target6", "target7"}
)

// startEnv starts PostgreSQL, Dovecot, Postfix, slapd, two passgate
// instances and HAProxy in front of them, and seeds the store.
func startEnv(parent context.Context, dir, bin string) (*environment, error) {
	ctx, cancel := context.WithTimeout(parent, startTimeout)
	defer cancel()
	e := &environment{appPasswords: map[string][]string{}}
	var err error
	if e.certs, err = testenv.NewCerts(dir); err != nil {
		return e, err
	}
	base, stopPG, err := testenv.Postgres(ctx)
	if err != nil {
		return e, err
	}
	e.stops = append(e.stops, stopPG)
	const db = "passgate_soak"
	dsn, err := testenv.CreateDatabase(ctx, base, db)
	if err != nil {
		return e, err
	}
	e.stops = append(e.stops, func() { _ = testenv.DropDatabase(context.Background(), base, db) })

	sub := func(name string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.Mkdir(p, 0o755)
	}
	d, err := sub("dovecot")
	if err != nil {
		return e, err
	}
	// Performance mode: one imap-login process serves many connections,
	// as a busy Dovecot is run.
	if e.dovecot, err = testenv.StartDovecotWith(ctx, d, e.certs, testenv.DovecotOptions{Performance: true}); err != nil {
		return e, err
	}
	e.stops = append(e.stops, e.dovecot.Stop)
	// carol's INBOX: the three small messages of alice's.
	if err := e.dovecot.SeedMailbox("carol", "INBOX", e.dovecot.Messages[:3]); err != nil {
		return e, err
	}
	if d, err = sub("postfix"); err != nil {
		return e, err
	}
	if e.postfix, err = testenv.StartPostfix(ctx, d, e.certs, e.dovecot); err != nil {
		return e, err
	}
	e.stops = append(e.stops, e.postfix.Stop)
	if d, err = sub("slapd"); err != nil {
		return e, err
	}
	if e.slapd, err = testenv.StartSlapd(ctx, d, e.certs); err != nil {
		return e, err
	}
	e.stops = append(e.stops, e.slapd.Stop)

	keyFile := filepath.Join(dir, "passgate.key")
	for i := range 2 {
		p, err := newInstance(e, filepath.Join(dir, fmt.Sprintf("passgate%d", i+1)), bin, dsn, keyFile)
		if err != nil {
			return e, err
		}
		if i == 0 {
			if err := p.seed(ctx, e); err != nil {
				return e, err
			}
		}
		if err := p.start(ctx); err != nil {
			return e, err
		}
		e.stops = append(e.stops, p.stop)
		e.instances = append(e.instances, p)
	}
	a, b := e.instances[0], e.instances[1]
	if d, err = sub("haproxy"); err != nil {
		return e, err
	}
	e.haproxy, err = testenv.StartHAProxy(ctx, d, []testenv.HAProxyRoute{
		{Name: "imaps", Backend: a.imaps, More: []string{b.imaps}, Send: "send-proxy-v2"},
		{Name: "smtps", Backend: a.smtps, More: []string{b.smtps}, Send: "send-proxy-v2"},
		{Name: "ldaps", Backend: a.ldaps, More: []string{b.ldaps}, Send: "send-proxy-v2"},
	})
	if err != nil {
		return e, err
	}
	e.stops = append(e.stops, e.haproxy.Stop)
	return e, nil
}

// instance is one "passgate serve" process.
type instance struct {
	dir, bin, config    string
	imaps, smtps, ldaps string // implicit-TLS listeners
	metrics             string
	logFile             string
	cmd                 *exec.Cmd
	done                chan struct{}
	exitErr             error
}

func newInstance(e *environment, dir, bin, dsn, keyFile string) (*instance, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	ports := make([]int, 7)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	p := &instance{dir: dir, bin: bin, config: filepath.Join(dir, "passgate.yaml"),
		imaps: addr(1), smtps: addr(3), ldaps: addr(5), metrics: addr(6),
		logFile: filepath.Join(dir, "passgate.log"), done: make(chan struct{})}
	master := filepath.Join(dir, "dovecot-master.secret")
	service := filepath.Join(dir, "ldap-service.secret")
	if err := os.WriteFile(master, []byte(e.dovecot.MasterPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(service, []byte(e.slapd.ServicePassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	q := strconv.Quote
	cfg := fmt.Sprintf(`store:
  driver: postgres
  dsn: %s
key_file: %s
tls:
  cert_file: %s
  key_file: %s
policy:
  trusted_networks: [127.0.0.1/32]
  proxy_networks: [127.0.0.1/32]
imap:
  listen: %s
  listen_tls: %s
  upstream:
    addresses: [%s]
    tls: starttls
    ca_file: %s
    server_name: 127.0.0.1
    login: master
    master_user: %s
    master_password_file: %s
    master_style: authzid
    forward_client: id
smtp:
  listen: %s
  listen_tls: %s
  hostname: passgate.test
  upstream:
    addresses: [%s]
    tls: starttls
    ca_file: %s
    login: xclient
    forward_client: xclient
ldap:
  listen: %s
  listen_tls: %s
  mode: relay
  user_dn_templates: ["uid={user},ou=people,dc=example,dc=test"]
  upstream:
    url: %s
    tls: starttls
    ca_file: %s
    service_dn: %s
    service_password_file: %s
metrics:
  listen: %s
log:
  level: info
  format: json
`, q(dsn), q(keyFile), q(e.certs.CertFile), q(e.certs.KeyFile),
		q(addr(0)), q(addr(1)), q(e.dovecot.IMAPAddr), q(e.certs.CAFile), q(e.dovecot.MasterUser), q(master),
		q(addr(2)), q(addr(3)), q(e.postfix.SubmissionAddr), q(e.certs.CAFile),
		q(addr(4)), q(addr(5)), q(e.slapd.URL), q(e.certs.CAFile), q(e.slapd.ServiceDN), q(service),
		q(addr(6)))
	return p, os.WriteFile(p.config, []byte(cfg), 0o600)
}

// admin runs one admin command against the instance's configuration
// and returns its standard output.
func (p *instance) admin(ctx context.Context, args ...string) (string, error) {
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, p.bin, append(args, "--config", p.config)...)
	c.Stdout, c.Stderr = &out, &errb
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("passgate %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// seed migrates the store and adds the users and app passwords.
func (p *instance) seed(ctx context.Context, e *environment) error {
	if _, err := p.admin(ctx, "migrate"); err != nil {
		return err
	}
	for _, u := range append(append([]string{}, enforcedUsers...), targetUsers...) {
		if _, err := p.admin(ctx, "user", "add", u, "--mfa", "enforced"); err != nil {
			return err
		}
	}
	for _, u := range enforcedUsers {
		for _, label := range []string{"phone", "tablet", "laptop"} {
			out, err := p.admin(ctx, "app-password", "create", u, "--label", label, "--json")
			if err != nil {
				return err
			}
			var created struct {
				Password string `json:"password"`
			}
			if err := json.Unmarshal([]byte(out), &created); err != nil || created.Password == "" {
				return fmt.Errorf("app-password create --json printed %q: %v", out, err)
			}
			e.appPasswords[u] = append(e.appPasswords[u], created.Password)
		}
	}
	return nil
}

// start runs "passgate serve" and waits until every listener accepts.
func (p *instance) start(ctx context.Context) error {
	log, err := os.Create(p.logFile)
	if err != nil {
		return err
	}
	p.cmd = exec.Command(p.bin, "serve", "--config", p.config)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s serve: %w", p.bin, err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		log.Close()
		close(p.done)
	}()
	for _, a := range []string{p.imaps, p.smtps, p.ldaps, p.metrics} {
		for {
			c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				return fmt.Errorf("passgate serve exited at start (%v):\n%s", p.exitErr, p.tail())
			case <-ctx.Done():
				return fmt.Errorf("passgate serve does not listen on %s: %w\n%s", a, ctx.Err(), p.tail())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// stop sends SIGTERM and waits for the drain (SIGKILL after 40 s).
func (p *instance) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *instance) tail() string {
	b, _ := os.ReadFile(p.logFile)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// sample is an instance's memory and goroutines at one moment.
type sample struct {
	rss        int64 // bytes
	goroutines int
}

// sample reads VmRSS from /proc and go_goroutines from /metrics.
func (p *instance) sample() (sample, error) {
	var s sample
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return s, fmt.Errorf("read the instance's status: %w", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			s.rss = kb << 10
		}
	}
	// No keep-alive: an idle connection would be a goroutine of its own.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return s, fmt.Errorf("read the instance's metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			s.goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
			return s, nil
		}
	}
	return s, fmt.Errorf("no go_goroutines in %s/metrics", p.metrics)
}

// auditCounts reads the login events since start through "passgate audit
// --kind login --jsonl" and counts them by key (see attemptKey). It reads
// again, for up to 30 s, until the counts equal want: the instances commit
// their events in the background.
func (p *instance) auditCounts(ctx context.Context, since time.Time, want map[string]int) (got map[string]int, lockouts int, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, lockouts, err = p.readAudit(ctx, since)
		if err != nil || equalCounts(got, want) || time.Now().After(deadline) {
			return got, lockouts, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// readAudit counts the login events since since by key, and those
// refused by the lockout.
func (p *instance) readAudit(ctx context.Context, since time.Time) (map[string]int, int, error) {
	c := exec.CommandContext(ctx, p.bin, "audit", "--kind", "login", "--jsonl", "--since", since.Format(time.RFC3339), "--config", p.config)
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, 0, err
	}
	var errb bytes.Buffer
	c.Stderr = &errb
	if err := c.Start(); err != nil {
		return nil, 0, err
	}
	counts, lockouts := map[string]int{}, 0
	dec := json.NewDecoder(out)
	for {
		var ev struct {
			Protocol   string `json:"protocol"`
			Outcome    string `json:"outcome"`
			Credential string `json:"credential"`
			Reason     string `json:"reason"`
		}
		if err := dec.Decode(&ev); err == io.EOF {
			break
		} else if err != nil {
			c.Process.Kill()
			c.Wait()
			return nil, 0, fmt.Errorf("passgate audit --jsonl: %w", err)
		}
		counts[auditKey(ev.Protocol, ev.Outcome, ev.Credential)]++
		if strings.HasPrefix(ev.Reason, "locked out") {
			lockouts++
		}
	}
	if err := c.Wait(); err != nil {
		return nil, 0, fmt.Errorf("passgate audit: %w\n%s", err, errb.String())
	}
	return counts, lockouts, nil
}

// auditKey is the key of a login event: protocol, then its credential
// when it succeeded, "refused" otherwise.
func auditKey(proto, outcome, credential string) string {
	if outcome == "success" {
		return proto + " " + credential
	}
	return proto + " refused (" + outcome + ")"
}

func equalCounts(a, b map[string]int) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// logErrors counts the ERROR lines and panics in the instance's log.
func (p *instance) logErrors() [2]int {
	b, _ := os.ReadFile(p.logFile)
	return [2]int{bytes.Count(b, []byte(`"level":"ERROR"`)), bytes.Count(b, []byte("panic"))}
}
