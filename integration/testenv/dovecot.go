package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// dovecotStartTimeout bounds how long StartDovecot waits for its ports.
const dovecotStartTimeout = time.Minute

// dovecotMailUser is the unprivileged system user that owns the
// mailboxes and runs Dovecot's mail processes.
const dovecotMailUser = "nobody"

// DovecotOptions tunes a Dovecot instance beyond StartDovecot's defaults.
type DovecotOptions struct {
	// Performance runs imap-login in Dovecot's performance mode
	// (service_count = 0: one login process serves many connections),
	// instead of the default of one process per connection.
	Performance bool
}

// Dovecot is a running throwaway Dovecot 2.3 with IMAP (plain with
// STARTTLS, implicit TLS, and a PROXY-protocol listener), LMTP on TCP and
// an auth socket for Postfix, all on 127.0.0.1.
type Dovecot struct {
	Dir           string // the instance's directory (configuration, state, mail, log)
	IMAPAddr      string // IMAP with STARTTLS, host:port
	IMAPSAddr     string // IMAP over implicit TLS
	IMAPProxyAddr string // IMAP expecting a PROXY v1/v2 header first (haproxy = yes)
	LMTPAddr      string // LMTP on TCP, for Postfix or direct delivery
	AuthSocket    string // path of the auth socket for Postfix SASL (mode 0666)
	LogFile       string // Dovecot's log
	// MasterUser and MasterPassword log in as any user (authzid or
	// "user*master").
	MasterUser, MasterPassword string
	// Users maps each user (alice, bob, carol, dave) to their password.
	// erin's password holds characters that IMAP must send as a literal
	// (quote, backslash, braces, non-ASCII).
	Users map[string]string
	// Messages are the bytes of the messages seeded into alice's INBOX,
	// UID i+1 for Messages[i], CRLF line endings, one over 1 MB.
	Messages [][]byte

	bin string
	uid int
	gid int

	mu   sync.Mutex
	proc *dovecotProc // the running process, nil when stopped
}

// dovecotProc is one run of the dovecot process.
type dovecotProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// StartDovecot starts Dovecot in dir (which must exist and be empty of a
// previous instance) with the server certificate of certs, seeds alice's
// INBOX, and returns once every port accepts connections. Stop ends it.
// The process gets SIGKILL if the test binary dies first.
func StartDovecot(ctx context.Context, dir string, certs *Certs) (*Dovecot, error) {
	return StartDovecotWith(ctx, dir, certs, DovecotOptions{})
}

// StartDovecotWith is StartDovecot with options.
func StartDovecotWith(ctx context.Context, dir string, certs *Certs, o DovecotOptions) (*Dovecot, error) {
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/dovecot"); statErr != nil {
			return nil, fmt.Errorf("testenv: dovecot is not installed (%w): run the README's test command, which installs it (Debian: apt-get install dovecot-imapd dovecot-lmtpd)", err)
		}
		bin = "/usr/sbin/dovecot"
	}
	if certs == nil {
		return nil, errors.New("testenv: StartDovecot needs certificates: call NewCerts first")
	}
	mailUser, err := user.Lookup(dovecotMailUser)
	if err != nil {
		return nil, fmt.Errorf("testenv: dovecot: look up the mail user %q: %w", dovecotMailUser, err)
	}
	uid, _ := strconv.Atoi(mailUser.Uid)
	gid, _ := strconv.Atoi(mailUser.Gid)
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: dovecot: %w", err)
	}
	d := &Dovecot{
		Dir:            dir,
		LogFile:        filepath.Join(dir, "dovecot.log"),
		AuthSocket:     filepath.Join(dir, "run", "auth-postfix"),
		MasterUser:     "passgate",
		MasterPassword: "passgate-master-pw",
		Users: map[string]string{
			"alice": "alice-primary-pw",
			"bob":   "bob-primary-pw",
			"carol": "carol-primary-pw",
			"dave":  "dave-primary-pw",
			"erin":  "erin \"pw\" \\ {4} \u00fc", // needs an IMAP literal
		},
		bin: bin,
		uid: uid,
		gid: gid,
	}
	ports := make([]int, 4)
	for i := range ports {
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	d.IMAPAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	d.IMAPSAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	d.IMAPProxyAddr = fmt.Sprintf("127.0.0.1:%d", ports[2])
	d.LMTPAddr = fmt.Sprintf("127.0.0.1:%d", ports[3])

	for _, sub := range []string{"run", "state", "mail"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("testenv: dovecot: %w", err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "mail"), uid, gid); err != nil {
		return nil, fmt.Errorf("testenv: dovecot: give the mail directory to %s: %w", dovecotMailUser, err)
	}
	if err := d.writeConfig(certs, ports, o); err != nil {
		return nil, err
	}
	d.Messages = seedMessages()
	if err := d.SeedMailbox("alice", "INBOX", d.Messages); err != nil {
		return nil, err
	}

	if err := d.Start(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// Start starts Dovecot again after Stop, on the same ports with the same
// configuration and mailboxes, and returns once every port accepts.
func (d *Dovecot) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != nil {
		return errors.New("testenv: dovecot: already running")
	}
	logf, err := os.OpenFile(filepath.Join(d.Dir, "dovecot.stderr"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: dovecot: %w", err)
	}
	p := &dovecotProc{cmd: exec.Command(d.bin, "-F", "-c", filepath.Join(d.Dir, "dovecot.conf")), done: make(chan struct{})}
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testenv: dovecot: start %s: %w", d.bin, err)
	}
	go func() {
		_ = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	d.proc = p
	if err := d.waitReady(ctx, p); err != nil {
		d.stopLocked()
		return err
	}
	return nil
}

func (d *Dovecot) writeConfig(certs *Certs, ports []int, o DovecotOptions) error {
	var pw strings.Builder
	for _, u := range []string{"alice", "bob", "carol", "dave", "erin"} {
		fmt.Fprintf(&pw, "%s:{PLAIN}%s:%d:%d::%s::\n", u, d.Users[u], d.uid, d.gid, filepath.Join(d.Dir, "mail", u))
	}
	files := map[string]string{
		"passwd":        pw.String(),
		"master-passwd": fmt.Sprintf("%s:{PLAIN}%s\n", d.MasterUser, d.MasterPassword),
	}
	loginService := ""
	if o.Performance {
		loginService = "  service_count = 0\n  process_min_avail = 1\n"
	}
	files["dovecot.conf"] = fmt.Sprintf(`# Throwaway Dovecot for passgate's tests.
base_dir = %[1]s/run
state_dir = %[1]s/state
instance_name = passgate-test-%[2]d
log_path = %[1]s/dovecot.log
info_log_path = %[1]s/dovecot.log
log_timestamp = "%%Y-%%m-%%d %%H:%%M:%%S "
auth_verbose = yes
auth_debug = no
login_log_format_elements = user=<%%u> method=%%m rip=%%r rport=%%b lip=%%l mpid=%%e %%c session=<%%{session}>
protocols = imap lmtp
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
first_valid_gid = 1
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
# The benchmarks hold hundreds of sessions of one user from one address.
mail_max_userip_connections = 1000
default_process_limit = 1000
default_client_limit = 5000
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:%[1]s/mail/%%u
mail_uid = %[3]d
mail_gid = %[4]d
ssl = yes
ssl_cert = <%[5]s
ssl_key = <%[6]s
ssl_min_protocol = TLSv1.2

namespace inbox {
  inbox = yes
  separator = /
}

passdb {
  driver = passwd-file
  args = %[1]s/master-passwd
  master = yes
  result_success = continue
}
passdb {
  driver = passwd-file
  args = %[1]s/passwd
}
userdb {
  driver = passwd-file
  args = %[1]s/passwd
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[7]d
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = %[8]d
    ssl = yes
  }
  inet_listener imap_haproxy {
    address = 127.0.0.1
    port = %[9]d
    haproxy = yes
  }
%[11]s}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[10]d
  }
}
service auth {
  unix_listener auth-postfix {
    mode = 0666
  }
}
protocol lmtp {
  auth_username_format = %%n
}
`, d.Dir, ports[0], d.uid, d.gid, certs.CertFile, certs.KeyFile, ports[0], ports[1], ports[2], ports[3], loginService)
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d.Dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("testenv: dovecot: write %s: %w", name, err)
		}
	}
	return nil
}

// waitReady waits until every TCP port accepts connections and the auth
// socket exists.
func (d *Dovecot) waitReady(ctx context.Context, p *dovecotProc) error {
	ctx, cancel := context.WithTimeout(ctx, dovecotStartTimeout)
	defer cancel()
	addrs := []string{d.IMAPAddr, d.IMAPSAddr, d.IMAPProxyAddr, d.LMTPAddr}
	for {
		ready := true
		for _, a := range addrs {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err != nil {
				ready = false
				break
			}
			c.Close()
		}
		if ready {
			if _, err := os.Stat(d.AuthSocket); err != nil {
				ready = false
			}
		}
		if ready {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("testenv: dovecot exited during start:\n%s\n%s", d.readFile("dovecot.stderr"), d.Log())
		case <-ctx.Done():
			return fmt.Errorf("testenv: dovecot did not open its ports in %s: %w\n%s", dovecotStartTimeout, ctx.Err(), d.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends Dovecot and waits until it has exited and its ports are
// closed. It is safe to call more than once; Start runs it again.
func (d *Dovecot) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
}

func (d *Dovecot) stopLocked() {
	p := d.proc
	if p == nil {
		return
	}
	d.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	// Login processes may outlive the master for a moment (longer on a
	// busy machine); a restart needs the port free.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", d.IMAPAddr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
	}
}

// Log returns Dovecot's log so far.
func (d *Dovecot) Log() string { return d.readFile("dovecot.log") }

// LogContains reports whether Dovecot's log holds substr.
func (d *Dovecot) LogContains(substr string) bool {
	return strings.Contains(d.Log(), substr)
}

func (d *Dovecot) readFile(name string) string {
	b, err := os.ReadFile(filepath.Join(d.Dir, name))
	if err != nil {
		return ""
	}
	return string(b)
}

// SeedMailbox writes msgs into the Maildir mailbox of user ("INBOX" or a
// folder name without separators), UIDs 1..len(msgs) in order. Use it
// before the mailbox is first opened.
func (d *Dovecot) SeedMailbox(user, mailbox string, msgs [][]byte) error {
	root := filepath.Join(d.Dir, "mail", user)
	mdir := root
	if !strings.EqualFold(mailbox, "INBOX") {
		mdir = filepath.Join(root, "."+mailbox)
	}
	for _, p := range []string{root, mdir, filepath.Join(mdir, "cur"), filepath.Join(mdir, "new"), filepath.Join(mdir, "tmp")} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
		}
	}
	var uidlist bytes.Buffer
	base := time.Now().Unix()
	fmt.Fprintf(&uidlist, "3 V%d N%d\n", base, len(msgs)+1)
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP1.passgate-test", base, i+1)
		path := filepath.Join(mdir, "cur", name+":2,")
		if err := os.WriteFile(path, m, 0o600); err != nil {
			return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
		}
		if err := os.Chown(path, d.uid, d.gid); err != nil {
			return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
		}
		fmt.Fprintf(&uidlist, "%d :%s:2,\n", i+1, name)
	}
	if !strings.EqualFold(mailbox, "INBOX") {
		sub := filepath.Join(root, "subscriptions")
		f, err := os.OpenFile(sub, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err == nil {
			fmt.Fprintf(f, "%s\n", mailbox)
			f.Close()
			_ = os.Chown(sub, d.uid, d.gid)
		}
	}
	path := filepath.Join(mdir, "dovecot-uidlist")
	if err := os.WriteFile(path, uidlist.Bytes(), 0o600); err != nil {
		return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
	}
	if err := os.Chown(path, d.uid, d.gid); err != nil {
		return fmt.Errorf("testenv: dovecot: seed %s/%s: %w", user, mailbox, err)
	}
	return nil
}

// seedMessages returns alice's INBOX: small messages, a 64 KiB one and one
// of 1.5 MB, byte-known, CRLF line endings.
func seedMessages() [][]byte {
	sizes := []int{300, 2_000, 20_000, 64 << 10, 1_500_000}
	msgs := make([][]byte, len(sizes))
	for i, size := range sizes {
		msgs[i] = Message(i+1, size)
	}
	return msgs
}

// Message returns a deterministic RFC 5322 message numbered n, with a body
// of about bodySize bytes in CRLF-terminated lines of 76 characters.
func Message(n, bodySize int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Sender <sender@example.test>\r\n")
	fmt.Fprintf(&b, "To: Alice <alice@example.test>\r\n")
	fmt.Fprintf(&b, "Subject: seed message %d\r\n", n)
	fmt.Fprintf(&b, "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n")
	fmt.Fprintf(&b, "Message-ID: <seed-%d@example.test>\r\n", n)
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=us-ascii\r\n\r\n")
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	line := make([]byte, 76)
	for written, row := 0, 0; written < bodySize; row++ {
		for i := range line {
			line[i] = alphabet[(n*7+row*13+i)%len(alphabet)]
		}
		b.Write(line)
		b.WriteString("\r\n")
		written += len(line) + 2
	}
	return b.Bytes()
}
