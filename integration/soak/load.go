package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// opTimeout bounds one client conversation.
const opTimeout = 30 * time.Second

// The exact failure every wrong secret must get (a lockout refusal is
// the same).
const (
	imapFailure = "NO [AUTHENTICATIONFAILED] Authentication failed."
	smtpFailure = "535 5.7.8 Authentication credentials invalid"
	ldapFailure = "invalid credentials"
)

// Kinds of login.
const (
	kindApp     = "app-password"
	kindPrimary = "primary"
	kindWrong   = "wrong secret"
)

// goodAddrs are the sources of good logins, attackAddrs those of the
// wrong secrets: disjoint, so that the lockout of a guesser's source
// never touches a good login.
var goodAddrs, attackAddrs = addrRange(10, 20), addrRange(100, 50)

func addrRange(first, n int) []string {
	a := make([]string, n)
	for i := range a {
		a[i] = "127.0.0." + strconv.Itoa(first+i)
	}
	return a
}

// stats collects what the clients saw.
type stats struct {
	mu         sync.Mutex
	latency    map[string][]time.Duration // "imap app-password" → login latencies
	audit      map[string]int             // the audit key each attempt must produce → attempts
	unexpected int
	examples   []string       // the first unexpected failures
	done       map[string]int // completed conversations: "IMAP sessions (SELECT, FETCH, IDLE)", …
}

func newStats() *stats {
	return &stats{latency: map[string][]time.Duration{}, audit: map[string]int{}, done: map[string]int{}}
}

// record notes one attempt of kind over proto. sent reports whether the
// login command went out (then the audit trail must hold it); err is an
// unexpected failure.
func (s *stats) record(proto, kind string, took time.Duration, sent bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sent {
		key := proto + " " + kind
		if kind == kindWrong {
			key = auditKey(proto, "failure", "")
		}
		s.audit[key]++
	}
	if err != nil {
		s.unexpected++
		if len(s.examples) < 10 {
			s.examples = append(s.examples, fmt.Sprintf("%s %s: %v", proto, kind, err))
		}
		return
	}
	s.latency[proto+" "+kind] = append(s.latency[proto+" "+kind], took)
}

func (s *stats) completed(what string) {
	s.mu.Lock()
	s.done[what]++
	s.mu.Unlock()
}

func (s *stats) attempts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int, len(s.audit))
	for k, v := range s.audit {
		m[k] = v
	}
	return m
}

// load drives the clients.
type load struct {
	env   *environment
	stats *stats
	idle  time.Duration
}

// prime logs alice and carol in once from every good address, so that
// each is a familiar address of theirs.
func (l *load) prime() error {
	for _, addr := range goodAddrs {
		for _, u := range enforcedUsers {
			took, sent, err := l.imap(addr, u, l.env.appPasswords[u][0], false, false)
			l.stats.record("imap", kindApp, took, sent, err)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// run starts workers clients of good logins and one guesser per attack
// address until ctx ends; the returned channel is closed once every
// attempt under way has finished.
func (l *load) run(ctx context.Context, workers int) <-chan struct{} {
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.worker(ctx, rand.New(rand.NewPCG(uint64(i), 1)))
		}()
	}
	for i, addr := range attackAddrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.guesser(ctx, i, addr, rand.New(rand.NewPCG(uint64(i), 2)))
		}()
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	return done
}

// worker runs good logins, weighted: IMAP sessions of app passwords 3,
// IMAP primary 2, SMTP app password 2, SMTP primary 1, LDAP app password 2,
// LDAP primary 1.
func (l *load) worker(ctx context.Context, r *rand.Rand) {
	dave := l.env.dovecot.Users
	for ctx.Err() == nil {
		addr := goodAddrs[r.IntN(len(goodAddrs))]
		app := enforcedUsers[r.IntN(len(enforcedUsers))]
		pw := l.env.appPasswords[app][r.IntN(len(l.env.appPasswords[app]))]
		primary := []string{"bob", "dave"}[r.IntN(2)]
		switch n := r.IntN(11); {
		case n < 3:
			took, sent, err := l.imap(addr, app, pw, true, false)
			l.stats.record("imap", kindApp, took, sent, err)
		case n < 5:
			took, sent, err := l.imap(addr, primary, dave[primary], false, false)
			l.stats.record("imap", kindPrimary, took, sent, err)
		case n < 7:
			took, sent, err := l.smtp(addr, app, pw, false)
			l.stats.record("smtp", kindApp, took, sent, err)
		case n < 8:
			took, sent, err := l.smtp(addr, primary, dave[primary], false)
			l.stats.record("smtp", kindPrimary, took, sent, err)
		case n < 10:
			took, sent, err := l.ldap(addr, app, pw, false)
			l.stats.record("ldap", kindApp, took, sent, err)
		default:
			took, sent, err := l.ldap(addr, "bob", l.env.slapd.Users["bob"], false)
			l.stats.record("ldap", kindPrimary, took, sent, err)
		}
	}
}

// guesser sends wrong secrets from addr, one at a time, each new (the
// lockout counts a repeated one once), over the three protocols in turn,
// to alice, carol and the users who exist only in the store: 15 guesses
// at one user, then the next, so that the per-user-and-address count
// locks the source within the first minute.
func (l *load) guesser(ctx context.Context, n int, addr string, r *rand.Rand) {
	users := append(append([]string{}, enforcedUsers...), targetUsers...)
	for i := 0; ctx.Err() == nil; i++ {
		u := users[(n+i/15)%len(users)]
		secret := make([]byte, 16)
		for j := range secret {
			secret[j] = byte('a' + r.IntN(26))
		}
		switch i % 3 {
		case 0:
			took, sent, err := l.imap(addr, u, string(secret), false, true)
			l.stats.record("imap", kindWrong, took, sent, err)
		case 1:
			took, sent, err := l.smtp(addr, u, string(secret), true)
			l.stats.record("smtp", kindWrong, took, sent, err)
		default:
			took, sent, err := l.ldap(addr, u, string(secret), true)
			l.stats.record("ldap", kindWrong, took, sent, err)
		}
	}
}

// dial connects to the HAProxy frontend route over TLS from addr.
func (l *load) dial(route, addr string) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
	c, err := tls.DialWithDialer(d, "tcp", l.env.haproxy.Addrs[route], l.env.certs.ClientTLS())
	if err != nil {
		return nil, fmt.Errorf("connect from %s: %w", addr, err)
	}
	c.SetDeadline(time.Now().Add(opTimeout))
	return c, nil
}

// imap logs in from addr; with session, it then selects INBOX, fetches
// three messages and IDLEs for l.idle, all through passgate's relay.
// With wrong, the only right answer is the uniform failure.
func (l *load) imap(addr, user, secret string, session, wrong bool) (took time.Duration, sent bool, err error) {
	c, err := l.dial("imaps", addr)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if g, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK") {
		return 0, false, fmt.Errorf("greeting %q: %v", g, err)
	}
	start := time.Now()
	if _, err := fmt.Fprintf(c, "a LOGIN %s %s\r\n", strconv.Quote(user), strconv.Quote(secret)); err != nil {
		return 0, false, err
	}
	reply, err := imapTagged(r, "a")
	took = time.Since(start)
	if err != nil {
		return took, true, fmt.Errorf("LOGIN: %w", err)
	}
	if wrong {
		if reply != "a "+imapFailure {
			return took, true, fmt.Errorf("LOGIN with a wrong secret: %q, want the uniform failure", reply)
		}
		return took, true, nil
	}
	if !strings.HasPrefix(reply, "a OK") {
		return took, true, fmt.Errorf("LOGIN %s from %s: %q", user, addr, reply)
	}
	if session {
		for _, cmd := range []string{"b SELECT INBOX", "c FETCH 1:3 (FLAGS RFC822.SIZE BODY.PEEK[])"} {
			fmt.Fprintf(c, "%s\r\n", cmd)
			if reply, err := imapTagged(r, cmd[:1]); err != nil || !strings.HasPrefix(reply, cmd[:1]+" OK") {
				return took, true, fmt.Errorf("%s: %q %v", cmd, reply, err)
			}
		}
		fmt.Fprintf(c, "d IDLE\r\n")
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+") {
			return took, true, fmt.Errorf("IDLE: %q %v", line, err)
		}
		time.Sleep(l.idle)
		fmt.Fprintf(c, "DONE\r\n")
		if reply, err := imapTagged(r, "d"); err != nil || !strings.HasPrefix(reply, "d OK") {
			return took, true, fmt.Errorf("IDLE DONE: %q %v", reply, err)
		}
	} else {
		fmt.Fprintf(c, "b SELECT INBOX\r\n")
		if reply, err := imapTagged(r, "b"); err != nil || !strings.HasPrefix(reply, "b OK") {
			return took, true, fmt.Errorf("SELECT: %q %v", reply, err)
		}
	}
	fmt.Fprintf(c, "z LOGOUT\r\n")
	if reply, err := imapTagged(r, "z"); err != nil || !strings.HasPrefix(reply, "z OK") {
		return took, true, fmt.Errorf("LOGOUT: %q %v", reply, err)
	}
	if session {
		l.stats.completed("IMAP sessions with SELECT, FETCH, IDLE")
	} else {
		l.stats.completed("IMAP sessions with SELECT")
	}
	return took, true, nil
}

// imapTagged reads responses up to the one tagged tag, skipping literals,
// and returns it without its line ending.
func imapTagged(r *bufio.Reader, tag string) (string, error) {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		for {
			// A line ending in {n} announces n bytes of literal.
			t := strings.TrimSuffix(line, "\r\n")
			i := strings.LastIndexByte(t, '{')
			if !strings.HasSuffix(t, "}") || i < 0 {
				break
			}
			n, err := strconv.Atoi(t[i+1 : len(t)-1])
			if err != nil {
				break
			}
			if _, err := r.Discard(n); err != nil {
				return "", err
			}
			if line, err = r.ReadString('\n'); err != nil {
				return "", err
			}
		}
		if strings.HasPrefix(line, tag+" ") {
			return strings.TrimSuffix(line, "\r\n"), nil
		}
	}
}

// smtp logs in from addr with AUTH PLAIN and, unless wrong, submits one
// small message to dave through passgate's relay to Postfix.
func (l *load) smtp(addr, user, secret string, wrong bool) (took time.Duration, sent bool, err error) {
	c, err := l.dial("smtps", addr)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	step := func(cmd, want string) (string, error) {
		if cmd != "" {
			if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
				return "", err
			}
		}
		var last string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return last, err
			}
			last = strings.TrimSuffix(line, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				break
			}
		}
		if !strings.HasPrefix(last, want) {
			return last, fmt.Errorf("%q, want %s", last, want)
		}
		return last, nil
	}
	if _, err := step("", "220"); err != nil {
		return 0, false, fmt.Errorf("greeting: %w", err)
	}
	if _, err := step("EHLO soak.test", "250"); err != nil {
		return 0, false, fmt.Errorf("EHLO: %w", err)
	}
	start := time.Now()
	auth := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + secret))
	reply, err := step("AUTH PLAIN "+auth, "")
	took = time.Since(start)
	if err != nil {
		return took, true, fmt.Errorf("AUTH: %w", err)
	}
	if wrong {
		if reply != smtpFailure {
			return took, true, fmt.Errorf("AUTH with a wrong secret: %q, want the uniform failure", reply)
		}
		return took, true, nil
	}
	if !strings.HasPrefix(reply, "235") {
		return took, true, fmt.Errorf("AUTH %s from %s: %q", user, addr, reply)
	}
	from := user + "@example.test"
	msg := fmt.Sprintf("From: <%s>\r\nTo: <dave@example.test>\r\nSubject: soak %d\r\n\r\n%s\r\n.", from, time.Now().UnixNano(),
		strings.Repeat(strings.Repeat("0123456789", 7)+"\r\n", 12))
	for _, s := range []struct{ cmd, want string }{
		{"MAIL FROM:<" + from + ">", "250"}, {"RCPT TO:<dave@example.test>", "250"}, {"DATA", "354"}, {msg, "250"}, {"QUIT", "221"},
	} {
		if _, err := step(s.cmd, s.want); err != nil {
			return took, true, fmt.Errorf("%s: %w", strings.SplitN(s.cmd, "\r\n", 2)[0], err)
		}
	}
	l.stats.completed("SMTP messages submitted")
	return took, true, nil
}

// ldap binds from addr as user's DN and, unless wrong, reads the user's
// own entry through passgate's relay to slapd.
func (l *load) ldap(addr, user, secret string, wrong bool) (took time.Duration, sent bool, err error) {
	d := &net.Dialer{Timeout: opTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
	c, err := ldap.DialURL("ldaps://"+l.env.haproxy.Addrs["ldaps"], ldap.DialWithDialer(d), ldap.DialWithTLSConfig(l.env.certs.ClientTLS()))
	if err != nil {
		return 0, false, fmt.Errorf("connect from %s: %w", addr, err)
	}
	defer c.Close()
	c.SetTimeout(opTimeout)
	dn := l.env.slapd.UserDN(user)
	start := time.Now()
	err = c.Bind(dn, secret)
	took = time.Since(start)
	if wrong {
		var le *ldap.Error
		if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultInvalidCredentials || le.Err == nil || le.Err.Error() != ldapFailure {
			return took, true, fmt.Errorf("bind with a wrong secret: %v, want the uniform failure", err)
		}
		return took, true, nil
	}
	if err != nil {
		return took, true, fmt.Errorf("bind %s from %s: %w", user, addr, err)
	}
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"mail"}, nil))
	if err != nil || len(res.Entries) != 1 {
		return took, true, fmt.Errorf("search of %s's own entry: %v", user, err)
	}
	l.stats.completed("LDAP binds followed by a search")
	return took, true, nil
}
