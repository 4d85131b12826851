package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// postfixStartTimeout bounds how long StartPostfix waits for its ports
// (Postfix builds a fresh queue on first start: 2–3 s).
const postfixStartTimeout = 60 * time.Second

// PostfixMessageSizeLimit is the instance's message_size_limit: room for
// the 50 MB relay benchmark.
const PostfixMessageSizeLimit = 100 << 20

// Postfix is a running throwaway Postfix 3.7 on 127.0.0.1: a submission
// port with STARTTLS and an implicit-TLS port, both doing SASL through
// Dovecot's auth socket and accepting XCLIENT from 127.0.0.0/8, delivering
// example.test to Dovecot over LMTP.
type Postfix struct {
	Dir            string // the instance's directory (config, queue, data, log)
	SubmissionAddr string // STARTTLS submission, host:port
	SubmissionsTLS string // implicit TLS (smtpd_tls_wrappermode), host:port
	LogFile        string // maillog_file
	// Domain is the virtual domain delivered to Dovecot; its users are
	// those of the Dovecot instance (alice@example.test, ...).
	Domain string

	cmd   *exec.Cmd
	leash io.WriteCloser // closing it stops master
	done  chan struct{}
	once  sync.Once
}

// StartPostfix starts Postfix's master daemon (as `postfix -c DIR/etc
// start-fg` would, but as a direct child) with its own
// configuration, queue and data directories under dir, the server
// certificate of certs, SASL through dove's auth socket and delivery to
// dove's LMTP port, and returns once both ports accept connections. dir
// and its parents must be traversable by the postfix user (mode 0755):
// Postfix's daemons drop privileges. Stop ends it.
func StartPostfix(ctx context.Context, dir string, certs *Certs, dove *Dovecot) (*Postfix, error) {
	bin, err := exec.LookPath("postfix")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/postfix"); statErr != nil {
			return nil, fmt.Errorf("testenv: postfix is not installed (%w): run the README's test command, which installs it (Debian: DEBIAN_FRONTEND=noninteractive apt-get install postfix)", err)
		}
		bin = "/usr/sbin/postfix"
	}
	if certs == nil || dove == nil {
		return nil, errors.New("testenv: StartPostfix needs certificates and a running Dovecot")
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: postfix: %w", err)
	}
	p := &Postfix{
		Dir:     dir,
		LogFile: filepath.Join(dir, "maillog"),
		Domain:  "example.test",
		done:    make(chan struct{}),
	}
	var ports [2]int
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	p.SubmissionAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	p.SubmissionsTLS = fmt.Sprintf("127.0.0.1:%d", ports[1])
	etc := filepath.Join(dir, "etc")
	for _, sub := range []string{"etc", "queue", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("testenv: postfix: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: postfix: %w", err)
	}
	if err := os.Chown(filepath.Join(dir, "data"), postfixUID(), -1); err != nil {
		return nil, fmt.Errorf("testenv: postfix: give the data directory to postfix: %w", err)
	}
	var vmailbox strings.Builder
	for u := range dove.Users {
		fmt.Fprintf(&vmailbox, "%s@%s %s\n", u, p.Domain, u)
	}
	// Each user may send only as themself (smtpd_sender_login_maps): it
	// proves that the login passgate forwards is the one Postfix applies.
	lmtpHost, lmtpPort, err := net.SplitHostPort(dove.LMTPAddr)
	if err != nil {
		return nil, fmt.Errorf("testenv: postfix: Dovecot's LMTP address %q: %w", dove.LMTPAddr, err)
	}
	mainCF := fmt.Sprintf(`# Throwaway Postfix for passgate's tests.
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.example.test
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtputf8_enable = no
smtpd_peername_lookup = no
smtp_host_lookup = native
lmtp_host_lookup = native
message_size_limit = %[2]d
mailbox_size_limit = 0
virtual_mailbox_domains = example.test
virtual_mailbox_maps = texthash:%[1]s/etc/vmailbox
virtual_transport = lmtp:inet:[%[3]s]:%[4]s
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_sasl_type = dovecot
smtpd_sasl_path = %[5]s
smtpd_sasl_auth_enable = yes
smtpd_tls_cert_file = %[6]s
smtpd_tls_key_file = %[7]s
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_sender_login_maps = texthash:%[1]s/etc/senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
default_process_limit = 50
`, dir, PostfixMessageSizeLimit, lmtpHost, lmtpPort, dove.AuthSocket, certs.CertFile, certs.KeyFile)
	masterCF := fmt.Sprintf(`# service type private unpriv chroot wakeup maxproc command
%[1]s inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
%[2]s inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, p.SubmissionAddr, p.SubmissionsTLS)
	files := map[string]string{"main.cf": mainCF, "master.cf": masterCF, "vmailbox": vmailbox.String(), "senders": vmailbox.String()}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return nil, fmt.Errorf("testenv: postfix: write %s: %w", name, err)
		}
	}

	// "postfix check" creates the queue and fixes permissions; then the
	// master daemon runs as this process's own child (what "postfix
	// start-fg" does through a shell, which would leave master behind when
	// the test binary dies), so that it gets SIGTERM with us.
	env := append(os.Environ(), "MAIL_CONFIG="+etc)
	check := exec.CommandContext(ctx, bin, "-c", etc, "check")
	check.Env = env
	if out, err := check.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testenv: postfix -c %s check: %w\n%s", etc, err, out)
	}
	pc := exec.CommandContext(ctx, "postconf", "-c", etc, "-h", "daemon_directory")
	pc.Env = env
	daemonDir, err := pc.Output()
	if err != nil {
		return nil, fmt.Errorf("testenv: postconf daemon_directory: %w", err)
	}
	master := filepath.Join(strings.TrimSpace(string(daemonDir)), "master")
	out, err := os.OpenFile(filepath.Join(dir, "postfix.stderr"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: postfix: %w", err)
	}
	// Postfix's master clears the parent-death signal, so a shell holds
	// it on a leash instead: it runs master and kills it when its standard
	// input, a pipe from this process, closes (Stop, or the test binary's
	// death).
	p.cmd = exec.Command("sh", "-c", `"$0" -c "$1" -s -d & pid=$!; read _; kill -TERM $pid; wait $pid`, master, etc)
	p.cmd.Env = env
	p.cmd.Stdout = out
	p.cmd.Stderr = out
	leash, err := p.cmd.StdinPipe()
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("testenv: postfix: %w", err)
	}
	p.leash = leash
	if err := p.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("testenv: postfix: start %s: %w", master, err)
	}
	go func() {
		_ = p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
	if err := p.waitReady(ctx); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func postfixUID() int {
	out, err := exec.Command("id", "-u", "postfix").Output()
	if err != nil {
		return -1
	}
	var uid int
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "%d", &uid); err != nil {
		return -1
	}
	return uid
}

func (p *Postfix) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, postfixStartTimeout)
	defer cancel()
	for {
		ready := true
		for _, a := range []string{p.SubmissionAddr, p.SubmissionsTLS} {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				ready = false
				break
			}
			c.Close()
		}
		if ready {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("testenv: postfix exited during start:\n%s\n%s", p.readFile("postfix.stderr"), p.Log())
		case <-ctx.Done():
			return fmt.Errorf("testenv: postfix did not open its ports in %s: %w\n%s\n%s", postfixStartTimeout, ctx.Err(), p.readFile("postfix.stderr"), p.Log())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends Postfix (master and its daemons) and waits for it. It is safe
// to call more than once.
func (p *Postfix) Stop() {
	p.once.Do(func() {
		if p.cmd == nil || p.cmd.Process == nil {
			return
		}
		_ = p.leash.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// Log returns Postfix's maillog so far.
func (p *Postfix) Log() string { return p.readFile("maillog") }

// WaitLog waits until the maillog holds every one of substrs, or ctx ends.
func (p *Postfix) WaitLog(ctx context.Context, substrs ...string) error {
	for {
		log := p.Log()
		missing := ""
		for _, s := range substrs {
			if !strings.Contains(log, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: postfix log lacks %q: %w\n%s", missing, ctx.Err(), log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Postfix) readFile(name string) string {
	b, err := os.ReadFile(filepath.Join(p.Dir, name))
	if err != nil {
		return ""
	}
	return string(b)
}
