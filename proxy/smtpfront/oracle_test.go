package smtpfront

import (
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// The fuzz targets compare passgate's server loop with go-smtp's server,
// the front it replaced, by running go-smtp's own server (the library, in
// process) over a scripted connection: the reference is the library's
// behaviour, not a copy of its code.

// scriptConn is a client connection whose bytes arrive as chunks, one
// per Read (the network's segments), and whose replies are discarded.
// It reports io.EOF once the chunks are used up.
type scriptConn struct {
	mu     sync.Mutex
	chunks [][]byte
	closed chan struct{}
	once   sync.Once
}

func newScriptConn(chunks [][]byte) *scriptConn {
	return &scriptConn{chunks: chunks, closed: make(chan struct{})}
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.chunks) > 0 && len(c.chunks[0]) == 0 {
		c.chunks = c.chunks[1:]
	}
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	return n, nil
}

func (c *scriptConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *scriptConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}
func (c *scriptConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }
func (c *scriptConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// oneConnListener hands out one connection, then waits until closed.
type oneConnListener struct {
	c      net.Conn
	once   sync.Once
	closed chan struct{}
	shut   sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.shut.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.c.LocalAddr() }

// oracleSession records what go-smtp's server hands its session.
type oracleSession struct {
	onMail func(from string, opts *smtp.MailOptions)
	onRcpt func(to string, opts *smtp.RcptOptions)
	onData func(r io.Reader)
	done   chan struct{}
	once   sync.Once
}

func (s *oracleSession) Reset() {}
func (s *oracleSession) Logout() error {
	s.once.Do(func() { close(s.done) })
	return nil
}
func (s *oracleSession) Mail(from string, opts *smtp.MailOptions) error {
	if s.onMail != nil {
		s.onMail(from, opts)
	}
	return nil
}
func (s *oracleSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.onRcpt != nil {
		s.onRcpt(to, opts)
	}
	return nil
}
func (s *oracleSession) Data(r io.Reader) error {
	if s.onData != nil {
		s.onData(r)
	}
	return nil
}

// runGoSMTP runs one connection of chunks through go-smtp's server, with
// the given line and message size limits (0: none), and returns when the
// session has ended.
func runGoSMTP(chunks [][]byte, lineLimit int, maxBytes int64, sess *oracleSession) {
	sess.done = make(chan struct{})
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return sess, nil }))
	s.Domain = "oracle.test"
	s.MaxLineLength = lineLimit
	s.MaxMessageBytes = maxBytes
	s.AllowInsecureAuth = true
	s.MaxRecipients = 0
	sc := newScriptConn(chunks)
	l := &oneConnListener{c: sc, closed: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.Serve(l)
	}()
	// The session ends with Logout, or, when go-smtp refuses the
	// connection before it has a session (a line limit under the
	// greeting's EHLO), with the connection's close alone.
	select {
	case <-sess.done:
	case <-sc.closed:
	}
	_ = s.Close()
	<-served
}

// dataPreamble brings a session to its message (read under the line
// limit like any other line: with a limit under 15 no message is run).
var dataPreamble = []string{"EHLO a\r\n", "MAIL FROM:<>\r\n", "RCPT TO:<a@b>\r\n", "DATA\r\n"}

// goSMTPData is what go-smtp's server gives its session for a message
// whose bytes (after dataPreamble) are in, arriving a byte at a time,
// read by the session size bytes at a time, with the line limit limit
// and the size limit max (0: none).
func goSMTPData(in []byte, limit int, max int64, size int) dataResult {
	all := append([]byte(strings.Join(dataPreamble, "")), in...)
	chunks := make([][]byte, len(all))
	for i := range all {
		chunks[i] = all[i : i+1]
	}
	res := dataResult{end: "data not run"}
	runGoSMTP(chunks, limit, max, &oracleSession{onData: func(r io.Reader) {
		out, err := readAllData(r, size)
		res.out, res.end = out, errKind(err)
	}})
	return res
}
