package testenv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// slapdStartTimeout bounds how long StartSlapd waits for slapd to listen.
const slapdStartTimeout = time.Minute

// Slapd is a throwaway OpenLDAP slapd on 127.0.0.1 with a small tree:
//
//	dc=example,dc=test
//	  ou=people: uid=alice, uid=bob, uid=carol (inetOrgPerson with mail,
//	             telephoneNumber and description; userPassword is each
//	             one's primary password, in Users)
//	  ou=groups: cn=staff (alice, bob); cn=mfa-users (groupOfNames: alice)
//	             and cn=mfa-posix (posixGroup: memberUid carol), the groups
//	             of policy.mfa_groups, which tests change as AdminDN
//	  ou=services: cn=passgate (the service account, allowed RFC 4370
//	             proxied authorization for every uid=…,ou=people entry) and
//	             cn=wiki (an application's own account, without MFA)
//
// ACL: a bound user reads every entry's cn, mail, uid and group
// membership; description only in the user's own entry; telephoneNumber
// only the service account reads. Passwords are random per instance.
type Slapd struct {
	Dir             string // the instance's directory (config, database, log)
	URL             string // ldap://127.0.0.1:PORT (StartTLS available)
	LDAPSURL        string // ldaps://127.0.0.1:PORT
	BaseDN          string // dc=example,dc=test
	ServiceDN       string // cn=passgate,ou=services,dc=example,dc=test
	ServicePassword string
	AppDN           string // cn=wiki,ou=services,dc=example,dc=test
	AppPassword     string
	AdminDN         string // cn=admin,dc=example,dc=test: the rootdn, which may change anything
	AdminPassword   string
	UserTemplate    string            // uid={user},ou=people,dc=example,dc=test
	Users           map[string]string // uid → primary password
	LogFile         string            // slapd's -d stats output

	cmd     *exec.Cmd
	logF    *os.File
	waitErr chan error
	once    sync.Once
}

// UserDN returns the DN of a user of the tree.
func (s *Slapd) UserDN(uid string) string {
	return strings.Replace(s.UserTemplate, "{user}", uid, 1)
}

// Pid returns slapd's process ID (for benchmarks that read its resident
// set from /proc).
func (s *Slapd) Pid() int { return s.cmd.Process.Pid }

// Log returns what slapd has logged so far (connections, binds, searches
// with their DNs and result codes; never passwords).
func (s *Slapd) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// StartSlapd writes a slapd.conf of its own into dir, loads the tree with
// slapadd and starts Debian's slapd on two free loopback ports (ldap:// with
// StartTLS, and ldaps://), with the certificate of certs. slapd gets SIGKILL
// if the test binary dies first. A missing slapd is an error that says how
// to install it.
func StartSlapd(ctx context.Context, dir string, certs *Certs) (*Slapd, error) {
	slapd, err := findTool("slapd", "/usr/sbin/slapd")
	if err != nil {
		return nil, err
	}
	slapadd, err := findTool("slapadd", "/usr/sbin/slapadd")
	if err != nil {
		return nil, err
	}
	for _, f := range []string{"core", "cosine", "inetorgperson", "nis"} {
		if _, err := os.Stat(filepath.Join("/etc/ldap/schema", f+".schema")); err != nil {
			return nil, fmt.Errorf("testenv: slapd: schema %s.schema missing in /etc/ldap/schema: %w (reinstall Debian's slapd package)", f, err)
		}
	}
	if certs == nil {
		return nil, errors.New("testenv: slapd: no certificates; make them with NewCerts")
	}
	s := &Slapd{
		Dir:          dir,
		BaseDN:       "dc=example,dc=test",
		ServiceDN:    "cn=passgate,ou=services,dc=example,dc=test",
		AppDN:        "cn=wiki,ou=services,dc=example,dc=test",
		AdminDN:      "cn=admin,dc=example,dc=test",
		UserTemplate: "uid={user},ou=people,dc=example,dc=test",
		Users:        make(map[string]string),
		LogFile:      filepath.Join(dir, "slapd.log"),
		waitErr:      make(chan error, 1),
	}
	if s.ServicePassword, err = randomPassword(); err != nil {
		return nil, err
	}
	if s.AppPassword, err = randomPassword(); err != nil {
		return nil, err
	}
	if s.AdminPassword, err = randomPassword(); err != nil {
		return nil, err
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		if s.Users[u], err = randomPassword(); err != nil {
			return nil, err
		}
	}
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(db, 0o700); err != nil {
		return nil, fmt.Errorf("testenv: slapd: %w", err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(conf, []byte(s.config(db, certs)), 0o600); err != nil {
		return nil, fmt.Errorf("testenv: slapd: write config: %w", err)
	}
	ldif := filepath.Join(dir, "tree.ldif")
	if err := os.WriteFile(ldif, []byte(s.tree()), 0o600); err != nil {
		return nil, fmt.Errorf("testenv: slapd: write tree: %w", err)
	}
	add := exec.CommandContext(ctx, slapadd, "-f", conf, "-l", ldif)
	if out, err := add.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testenv: slapd: slapadd: %w\n%s", err, out)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	tlsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	s.URL = "ldap://127.0.0.1:" + strconv.Itoa(port)
	s.LDAPSURL = "ldaps://127.0.0.1:" + strconv.Itoa(tlsPort)
	s.logF, err = os.Create(s.LogFile)
	if err != nil {
		return nil, fmt.Errorf("testenv: slapd: log file: %w", err)
	}
	// Not CommandContext: the server outlives the start-up context.
	s.cmd = exec.Command(slapd, "-f", conf, "-h", s.URL+"/ "+s.LDAPSURL+"/", "-d", "stats")
	s.cmd.Dir = dir
	s.cmd.Stdout = s.logF
	s.cmd.Stderr = s.logF
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		s.logF.Close()
		return nil, fmt.Errorf("testenv: slapd: start: %w", err)
	}
	go func() { s.waitErr <- s.cmd.Wait() }()
	if err := s.waitListening(ctx, []string{"127.0.0.1:" + strconv.Itoa(port), "127.0.0.1:" + strconv.Itoa(tlsPort)}); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Slapd) waitListening(ctx context.Context, addrs []string) error {
	deadline := time.Now().Add(slapdStartTimeout)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case werr := <-s.waitErr:
				s.waitErr <- werr
				return fmt.Errorf("testenv: slapd exited at start (%v); its log:\n%s", werr, s.Log())
			case <-ctx.Done():
				return fmt.Errorf("testenv: slapd: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("testenv: slapd does not listen on %s after %s; its log:\n%s", a, slapdStartTimeout, s.Log())
			}
		}
	}
	return nil
}

// Stop stops slapd (SIGTERM, then SIGKILL after 5 s). The directory is
// left for the caller to remove.
func (s *Slapd) Stop() {
	s.once.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.waitErr:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.waitErr
		}
		s.logF.Close()
	})
}

func (s *Slapd) config(db string, certs *Certs) string {
	var b strings.Builder
	for _, f := range []string{"core", "cosine", "inetorgperson", "nis"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", f)
	}
	fmt.Fprintf(&b, `pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile %[2]s
TLSCertificateFile %[3]s
TLSCertificateKeyFile %[4]s
# RFC 4370 proxied authorization: honour authzTo of the account that asks.
authz-policy to

database mdb
maxsize 67108864
suffix "%[5]s"
rootdn "cn=admin,%[5]s"
rootpw "%[8]s"
directory %[6]s

# slapd reads authzTo with "auth" access during proxied authorization;
# hidden entirely, it answers 123.
access to attrs=authzTo
	by self auth
	by * none
access to attrs=userPassword
	by self =xw
	by anonymous auth
	by * none
access to attrs=telephoneNumber
	by dn.exact="%[7]s" read
	by * none
access to attrs=description
	by dn.exact="%[7]s" read
	by self read
	by * none
access to *
	by dn.exact="%[7]s" read
	by users read
	by anonymous auth
	by * none
`, s.Dir, certs.CAFile, certs.CertFile, certs.KeyFile, s.BaseDN, db, s.ServiceDN, s.AdminPassword)
	return b.String()
}

func (s *Slapd) tree() string {
	var b strings.Builder
	fmt.Fprintf(&b, `dn: %[1]s
objectClass: top
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,%[1]s
objectClass: organizationalUnit
ou: people

dn: ou=groups,%[1]s
objectClass: organizationalUnit
ou: groups

dn: ou=services,%[1]s
objectClass: organizationalUnit
ou: services

dn: %[2]s
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: passgate
userPassword: %[3]s
authzTo: dn.subtree:ou=people,%[1]s

dn: %[4]s
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: wiki
userPassword: %[5]s

`, s.BaseDN, s.ServiceDN, s.ServicePassword, s.AppDN, s.AppPassword)
	i := 0
	for _, u := range []string{"alice", "bob", "carol"} {
		i++
		title := strings.ToUpper(u[:1]) + u[1:]
		fmt.Fprintf(&b, `dn: %s
objectClass: inetOrgPerson
uid: %s
cn: %s Example
sn: Example
mail: %s@example.test
telephoneNumber: +1 555 010%d
description: %s's desk
userPassword: %s

`, s.UserDN(u), u, title, u, i, title, s.Users[u])
	}
	fmt.Fprintf(&b, `dn: cn=staff,ou=groups,%s
objectClass: groupOfNames
cn: staff
member: %s
member: %s

dn: cn=mfa-users,ou=groups,%[1]s
objectClass: groupOfNames
cn: mfa-users
member: %[2]s

dn: cn=mfa-posix,ou=groups,%[1]s
objectClass: posixGroup
cn: mfa-posix
gidNumber: 5000
memberUid: carol
`, s.BaseDN, s.UserDN("alice"), s.UserDN("bob"))
	return b.String()
}

// findTool finds a server binary on the PATH or at its Debian location.
func findTool(name, debianPath string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if _, err := os.Stat(debianPath); err == nil {
		return debianPath, nil
	}
	return "", fmt.Errorf("testenv: %s not found: install Debian's slapd and ldap-utils (DEBIAN_FRONTEND=noninteractive apt-get install -y slapd ldap-utils) and run the tests again", name)
}

// randomPassword returns 20 random letters and digits.
func randomPassword() (string, error) {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	var buf [20]byte
	if _, err := rand.Read(buf[:]); err != nil {
		return "", fmt.Errorf("testenv: random password: %w", err)
	}
	for i, c := range buf {
		buf[i] = alphabet[int(c)%len(alphabet)]
	}
	return string(buf[:]), nil
}
