package demo

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// SMTP is a running in-process SMTP upstream that prints every message it
// receives.
type SMTP struct {
	Addr  string
	srv   *smtp.Server
	done  chan struct{}
	open  *atomic.Int64
	close sync.Once
	err   error
}

// SMTPOptions configures StartSMTP.
type SMTPOptions struct {
	Users          map[string]string // user → primary password
	MasterUser     string            // may submit as anyone (SASL PLAIN authzid)
	MasterPassword string
	Out            io.Writer // where received messages are printed
}

// StartSMTP starts the upstream on 127.0.0.1 (a free port).
func StartSMTP(opts SMTPOptions) (*SMTP, error) {
	var mu sync.Mutex
	open := new(atomic.Int64)
	be := smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		open.Add(1)
		return &smtpSession{opts: &opts, mu: &mu, open: open}, nil
	})
	srv := smtp.NewServer(be)
	srv.Domain = "upstream.demo.invalid"
	srv.AllowInsecureAuth = true // loopback only
	srv.MaxMessageBytes = 10 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: listen for the SMTP upstream: %w", err)
	}
	s := &SMTP{Addr: ln.Addr().String(), srv: srv, done: make(chan struct{}), open: open}
	go func() {
		defer close(s.done)
		srv.Serve(ln)
	}()
	return s, nil
}

// Open returns the number of sessions open now.
func (s *SMTP) Open() int { return int(s.open.Load()) }

// Close stops the upstream, closing its sessions, and waits for it. A
// second call returns the first one's result.
func (s *SMTP) Close() error {
	s.close.Do(func() {
		s.err = s.srv.Close()
		<-s.done
	})
	return s.err
}

type smtpSession struct {
	opts *SMTPOptions
	open *atomic.Int64
	mu   *sync.Mutex
	user string
	from string
	to   []string
}

func (s *smtpSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnsupported
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if identity == "" || identity == username {
			if pw, ok := s.opts.Users[username]; ok && pw == password {
				s.user = username
				return nil
			}
			return errors.New("invalid credentials")
		}
		if s.opts.MasterUser != "" && username == s.opts.MasterUser && password == s.opts.MasterPassword {
			if _, ok := s.opts.Users[identity]; ok {
				s.user = identity
				return nil
			}
		}
		return errors.New("invalid credentials")
	}), nil
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.opts.Out, "\n--- demo SMTP upstream received a message: user %s, from <%s>, to <%s>, %d bytes ---\n%s\n--- end of message ---\n",
		s.user, s.from, strings.Join(s.to, ">, <"), len(b), strings.TrimRight(string(b), "\r\n"))
	return nil
}

func (s *smtpSession) Reset()        { s.from, s.to = "", nil }
func (s *smtpSession) Logout() error { s.open.Add(-1); return nil }
