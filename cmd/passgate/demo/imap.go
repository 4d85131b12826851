// Package demo runs the in-process upstream servers of "passgate demo": an
// IMAP server holding a few messages (go-imap's imapserver with
// imapmemserver) and an SMTP server that prints what it receives
// (go-smtp's server). They stand where Dovecot and Postfix stand in
// production, at the far end of the path of a login, so that a new user can
// try passgate on a machine with nothing but Go.
//
// They are for the demo only: no TLS, no persistence.
package demo

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
)

// IMAP is a running in-process IMAP upstream.
type IMAP struct {
	Addr  string // host:port it listens on
	srv   *imapserver.Server
	ln    net.Listener
	done  chan struct{}
	open  *atomic.Int64
	close sync.Once
	err   error
}

// IMAPOptions configures StartIMAP.
type IMAPOptions struct {
	Users          map[string]string // user → primary password
	MasterUser     string            // master user that may log in as anyone (SASL PLAIN authzid)
	MasterPassword string
	Messages       map[string][]string // user → raw messages for INBOX
}

type backend struct {
	open   *atomic.Int64 // sessions open now
	mem    *imapmemserver.Server
	users  map[string]*imapmemserver.User
	master string
	mpw    string
}

// StartIMAP starts the upstream on 127.0.0.1 (a free port).
func StartIMAP(opts IMAPOptions) (*IMAP, error) {
	b := &backend{open: new(atomic.Int64), mem: imapmemserver.New(), users: map[string]*imapmemserver.User{}, master: opts.MasterUser, mpw: opts.MasterPassword}
	for name, pw := range opts.Users {
		u := imapmemserver.NewUser(name, pw)
		if err := u.Create("INBOX", nil); err != nil {
			return nil, fmt.Errorf("demo: create INBOX of %s: %w", name, err)
		}
		for _, m := range opts.Messages[name] {
			raw := strings.ReplaceAll(strings.ReplaceAll(m, "\r\n", "\n"), "\n", "\r\n")
			if _, err := u.Append("INBOX", literal{bytes.NewReader([]byte(raw)), int64(len(raw))}, &imap.AppendOptions{Time: time.Now()}); err != nil {
				return nil, fmt.Errorf("demo: append a message for %s: %w", name, err)
			}
		}
		b.mem.AddUser(u)
		b.users[name] = u
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			b.open.Add(1)
			return &session{b: b}, nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}, imap.CapSASLIR: {}},
		InsecureAuth: true, // loopback only
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo: listen for the IMAP upstream: %w", err)
	}
	s := &IMAP{Addr: ln.Addr().String(), srv: srv, ln: ln, done: make(chan struct{}), open: b.open}
	go func() {
		defer close(s.done)
		srv.Serve(ln)
	}()
	return s, nil
}

// Open returns the number of sessions open now.
func (s *IMAP) Open() int { return int(s.open.Load()) }

// Close stops the upstream, closing its sessions, and waits for it. A
// second call returns the first one's result.
func (s *IMAP) Close() error {
	s.close.Do(func() {
		s.err = s.srv.Close()
		<-s.done
	})
	return s.err
}

type literal struct {
	*bytes.Reader
	n int64
}

func (l literal) Size() int64 { return l.n }

// session is an imapmemserver session that also accepts the master user
// through SASL PLAIN with an authzid, as Dovecot does.
type session struct {
	*imapmemserver.UserSession
	b *backend
}

var errAuth = imapserver.ErrAuthFailed

func (s *session) Login(username, password string) error {
	u := s.b.users[username]
	if u == nil {
		return errAuth
	}
	if err := u.Login(username, password); err != nil {
		return err
	}
	s.UserSession = imapmemserver.NewUserSession(u)
	return nil
}

func (s *session) AuthenticateMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Authenticate(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, errors.New("demo: unsupported mechanism")
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if identity == "" || identity == username {
			return s.Login(username, password)
		}
		if s.b.master == "" || username != s.b.master || password != s.b.mpw {
			return errAuth
		}
		u := s.b.users[identity]
		if u == nil {
			return errAuth
		}
		s.UserSession = imapmemserver.NewUserSession(u)
		return nil
	}), nil
}

func (s *session) Close() error {
	s.b.open.Add(-1)
	if s.UserSession == nil {
		return nil
	}
	return s.UserSession.Close()
}
