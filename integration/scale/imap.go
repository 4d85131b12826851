package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/passgate/passgate/backends/store"
	"github.com/passgate/passgate/integration/testenv"
)

// imapKinds are the logins measured through IMAP, in the rows' order.
var imapKinds = []string{"good app password", "wrong secret", "unknown user"}

// imapTargets are the three places an IMAP LOGIN is measured at: passgate
// on the seeded store, the same passgate on the twin store (the same
// users, no events), and Dovecot itself.
var imapTargets = []struct{ name, suffix string }{
	{"passgate", ""}, {"passgate, empty journal", ", empty journal"}, {"Dovecot direct", ", direct to Dovecot"},
}

// imapRow is the row of a kind's IMAP LOGIN at a target.
func imapRow(kind, suffix string) string { return "IMAP LOGIN " + kind + " p50/p99" + suffix }

// dovecotPassword is the password Dovecot knows every measured user by.
const dovecotPassword = "dovecot-primary-pw"

// measureIMAP times IMAP LOGINs — the command to its tagged reply, on a
// plaintext connection from loopback — through "passgate serve" in front
// of a throwaway Dovecot (testenv), on the seeded store and on its twin
// with an empty journal, and to Dovecot directly, for each kind of login.
// The three targets take turns login by login, so that they see the same
// load; each login comes from its own loopback address, so that neither
// passgate's lockout (on, with its defaults) nor Dovecot's penalty of an
// address counts the others. passgate's failure delay is 0: the figures
// are the work, not the delay that a refusal waits for. Dovecot runs in
// performance mode.
func measureIMAP(ctx context.Context, cfg config, full, twin store.Options, dir, twinDir string, rows map[string]string) error {
	ddir := filepath.Join(dir, "dovecot")
	if err := os.RemoveAll(ddir); err != nil {
		return err
	}
	if err := os.MkdirAll(ddir, 0o755); err != nil {
		return err
	}
	// Dovecot's mail processes run as another user: let them through.
	for _, d := range []string{dir, ddir} {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	certs, err := testenv.NewCerts(ddir)
	if err != nil {
		return err
	}
	// Performance mode (login processes that serve many connections), as
	// a site of this size runs it: a process forked per connection would
	// add Dovecot's fork to passgate's upstream login, not the store's.
	dove, err := testenv.StartDovecotWith(ctx, ddir, certs, testenv.DovecotOptions{Performance: true})
	if err != nil {
		return err
	}
	defer dove.Stop()

	r := rand.New(rand.NewPCG(7, 8))
	good := make([]int, cfg.logins)
	for k := range good {
		good[k] = r.IntN(cfg.users)
	}
	if err := addDovecotUsers(dove, good); err != nil {
		return err
	}
	master := filepath.Join(dir, "master.secret")
	if err := os.WriteFile(master, []byte(dove.MasterPassword+"\n"), 0o600); err != nil {
		return err
	}
	var addrs [2]string
	for i, s := range []struct {
		opts store.Options
		dir  string
	}{{full, dir}, {twin, twinDir}} {
		stop, addr, err := serveIMAP(ctx, cfg, s.opts, s.dir, dove, master)
		if err != nil {
			return err
		}
		defer stop()
		addrs[i] = addr
	}
	targetAddr := []string{addrs[0], addrs[1], dove.IMAPAddr}

	// One login of each good user at each target first: Dovecot makes a
	// user's mailbox at their first login, which is not what is measured.
	for _, i := range good {
		for t, addr := range targetAddr {
			pw := secret(i, 0)
			if t == 2 {
				pw = dovecotPassword
			}
			if _, err := imapLogin(ctx, addr, loopback(r), userName(i), pw, true); err != nil {
				return fmt.Errorf("warm-up at %s: %w", imapTargets[t].name, err)
			}
		}
	}
	for _, kind := range imapKinds {
		took := make([][]time.Duration, len(imapTargets))
		for k := range cfg.logins {
			var user, pw string
			var want bool
			switch kind {
			case "good app password":
				user, pw, want = userName(good[k]), secret(good[k], r.IntN(3)), true
			case "wrong secret":
				user, pw = userName(r.IntN(cfg.users)), "zzzzzzzzzzzzzzzz"
			default:
				user, pw = fmt.Sprintf("nobody%07d", r.IntN(cfg.users)), "zzzzzzzzzzzzzzzz"
			}
			// Rotate the order, so that no target always goes first.
			for n := range imapTargets {
				t := (k + n) % len(imapTargets)
				p := pw
				if t == 2 && want {
					p = dovecotPassword
				}
				d, err := imapLogin(ctx, targetAddr[t], loopback(r), user, p, want)
				if err != nil {
					return fmt.Errorf("IMAP LOGIN %s at %s: %w", kind, imapTargets[t].name, err)
				}
				took[t] = append(took[t], d)
			}
		}
		for t, ds := range took {
			slices.Sort(ds)
			rows[imapRow(kind, imapTargets[t].suffix)] = fmt.Sprintf("%s / %s", ms(ds[len(ds)/2]), ms(ds[len(ds)*99/100]))
		}
	}
	return nil
}

// addDovecotUsers adds the users numbered in good to Dovecot's password
// file (its passdb and userdb), with dovecotPassword and the uid, gid and
// mail directory layout of its own users. Dovecot reads the file again
// when it changes.
func addDovecotUsers(dove *testenv.Dovecot, good []int) error {
	path := filepath.Join(dove.Dir, "passwd")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var ids []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Split(line, ":"); len(f) >= 4 && f[0] == "alice" {
			ids = f[2:4]
		}
	}
	if ids == nil {
		return errors.New("dovecot: no uid and gid to copy in its password file")
	}
	var add strings.Builder
	for _, i := range good {
		n := userName(i)
		fmt.Fprintf(&add, "%s:{PLAIN}%s:%s:%s::%s::\n", n, dovecotPassword, ids[0], ids[1], filepath.Join(dove.Dir, "mail", n))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(add.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// serveIMAP starts "passgate serve" on a store with an IMAP listener in
// front of Dovecot (its master user, the client's address forwarded by
// ID, as the deployment guide sets it up) and returns once /readyz says
// 200.
func serveIMAP(ctx context.Context, cfg config, opts store.Options, dir string, dove *testenv.Dovecot, master string) (stop func(), addr string, err error) {
	imapPort, metricsPort := freePort(), freePort()
	conf := filepath.Join(dir, "passgate-imap.yaml")
	y := fmt.Sprintf(`store:
  driver: %s
  dsn: %q
key_file: %q
imap:
  listen: 127.0.0.1:%d
  upstream:
    addresses: [%q]
    tls: none
    login: master
    master_user: %q
    master_password_file: %q
    master_style: authzid
    forward_client: id
policy:
  trusted_networks: [127.0.0.0/8]
  failure_delay: 0s
metrics:
  listen: 127.0.0.1:%d
log:
  level: error
`, cfg.driver, opts.DSN, opts.KeyFile, imapPort, dove.IMAPAddr, dove.MasterUser, master, metricsPort)
	if err := os.WriteFile(conf, []byte(y), 0o600); err != nil {
		return nil, "", err
	}
	stop, _, err = startServe(ctx, cfg.bin, append(os.Environ(), "PASSGATE_CONFIG="+conf), dir, metricsPort, 2*time.Minute)
	if err != nil {
		return nil, "", err
	}
	return stop, fmt.Sprintf("127.0.0.1:%d", imapPort), nil
}

// loopback returns a random address of 127.0.0.0/8 other than 127.0.0.1.
func loopback(r *rand.Rand) string {
	return fmt.Sprintf("127.%d.%d.%d", 1+r.IntN(254), r.IntN(256), 1+r.IntN(254))
}

// imapLogin connects to addr from the address from, reads the greeting,
// and times a LOGIN from its command to its tagged reply, which must be
// OK when want is true and NO otherwise.
func imapLogin(ctx context.Context, addr, from, user, pw string, want bool) (time.Duration, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "* OK") {
		return 0, fmt.Errorf("greeting %q", strings.TrimSpace(greeting))
	}
	start := time.Now()
	if _, err := fmt.Fprintf(c, "a1 LOGIN %q %q\r\n", user, pw); err != nil {
		return 0, err
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, fmt.Errorf("LOGIN %s: %w", user, err)
		}
		if !strings.HasPrefix(line, "a1 ") {
			continue
		}
		took := time.Since(start)
		ok := strings.HasPrefix(line, "a1 OK")
		if ok != want {
			return 0, fmt.Errorf("LOGIN %s: %q", user, strings.TrimSpace(line))
		}
		if ok {
			fmt.Fprintf(c, "a2 LOGOUT\r\n")
			br.ReadString('\n')
		}
		return took, nil
	}
}
