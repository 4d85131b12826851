package ldapupstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/passgate/passgate/backends/ldapwire"
	"github.com/passgate/passgate/backends/sockwire"
)

// writeTimeout bounds one write to the directory: a write gets at least
// this long, and at most twice this long (writeDeadline).
const writeTimeout = 30 * time.Second

// keptBufferBytes is the largest write buffer a session keeps between
// requests; a larger one (a large request) is left to the collector.
const keptBufferBytes = 4 << 10

// ErrSessionClosed is the error of operations on a closed or lost Session.
const ErrSessionClosed = constError("ldapupstream: session closed")

// Session is one connection to the directory that carries the operations
// of one client connection. Its reader goroutine runs until Close or until
// the directory closes the connection. Safe for concurrent use.
type Session struct {
	c  *Client
	nc net.Conn // the socket as a sockwire.Socket, with TLS on top when configured
	br *bufio.Reader

	wmu  sync.Mutex
	wbuf []byte        // the request being written; guarded by wmu
	wdl  writeDeadline // guarded by wmu

	// onIdle is OnIdle's function; dispatched (reader only) says that a
	// handler ran since it was last called.
	onIdle     atomic.Pointer[func()]
	dispatched bool

	mu       sync.Mutex
	next     int64
	handlers map[int64]func(op, controls []byte, last bool, err error)
	err      error
	done     chan struct{}
}

// Open dials the directory, sets up TLS as configured and starts the
// session's reader. The session is not bound.
func (c *Client) Open(ctx context.Context) (*Session, error) {
	d := &net.Dialer{Timeout: c.opts.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return nil, fmt.Errorf("ldapupstream: dial %s: %w (ldap.upstream.url; is the directory up?)", c.addr, err)
	}
	s := &Session{c: c, handlers: make(map[int64]func(op, controls []byte, last bool, err error)), done: make(chan struct{})}
	// The socket calls idle when a read finds nothing to read yet:
	// every answer read so far has gone to its handler.
	s.nc = sockwire.NewSocket(nc, s.idle)
	if c.opts.TLS == TLSStartTLS {
		if err := s.startTLS(ctx); err != nil {
			nc.Close()
			return nil, err
		}
	}
	if c.implicit || c.opts.TLS == TLSStartTLS {
		tc := tls.Client(s.nc, c.tlsConf.Clone())
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("ldapupstream: TLS handshake with %s: %w (ldap.upstream.ca_file, ldap.upstream.server_name)", c.addr, err)
		}
		s.nc = tc
	}
	s.br = bufio.NewReaderSize(s.nc, 16<<10)
	go s.reader()
	return s, nil
}

// startTLS runs the StartTLS extended operation before the reader starts.
func (s *Session) startTLS(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		s.nc.SetDeadline(dl)
		defer s.nc.SetDeadline(time.Time{})
	}
	req := envelope(s.nextIDLocked(), extendedOp(oidStartTLS), nil)
	if _, err := s.nc.Write(req); err != nil {
		return fmt.Errorf("ldapupstream: StartTLS with %s: %w", s.c.addr, err)
	}
	// Read byte by byte: nothing after the response may be consumed, it
	// belongs to the TLS handshake.
	raw, err := ldapwire.ReadMessage(bufio.NewReaderSize(oneByteReader{s.nc}, 16), s.c.opts.MaxMessageBytes)
	if err != nil {
		return fmt.Errorf("ldapupstream: StartTLS with %s: %w", s.c.addr, err)
	}
	m, err := ldapwire.ParseMessage(raw)
	if err != nil {
		return fmt.Errorf("ldapupstream: StartTLS with %s: %w", s.c.addr, err)
	}
	if m.Op.Tag != opExtendedResponse {
		return fmt.Errorf("ldapupstream: StartTLS with %s: unexpected answer", s.c.addr)
	}
	code, diag, _, err := ldapResult(m.Op)
	if err != nil {
		return fmt.Errorf("ldapupstream: StartTLS with %s: %w", s.c.addr, err)
	}
	if code != 0 {
		return fmt.Errorf("ldapupstream: StartTLS refused by %s: result %d %q (does the directory have a certificate? ldap.upstream.tls)", s.c.addr, code, diag)
	}
	return nil
}

// oneByteReader reads at most one byte per call, so that a bufio.Reader
// on top of it never reads ahead.
type oneByteReader struct{ r net.Conn }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// OnIdle sets fn, which the session's reader calls each time it has
// passed every answer it has read to its handler and is about to wait
// for the directory to send more, or has passed on the last answer owed
// to any request (and once more when the session ends):
// the moment for a relay to write the answers it held back, so that the
// answers of one read from the directory cost one write to the client.
// fn runs on the reader and must not block for long.
func (s *Session) OnIdle(fn func()) {
	s.onIdle.Store(&fn)
}

// idle calls OnIdle's function if a handler ran since the last call.
// Reader only.
func (s *Session) idle() {
	if !s.dispatched {
		return
	}
	s.dispatched = false
	if fn := s.onIdle.Load(); fn != nil {
		(*fn)()
	}
}

// reader dispatches responses to their handlers until the connection ends.
// A response is read into the reader's buffer, where it stays valid only
// until the handler returns.
func (s *Session) reader() {
	var err error
	for {
		var raw []byte
		raw, err = ldapwire.ReadMessageShared(s.br, s.c.opts.MaxMessageBytes)
		if err != nil {
			break
		}
		var m message
		m, err = ldapwire.ParseMessage(raw)
		if err != nil {
			break
		}
		if m.ID == 0 {
			// Unsolicited notification: in practice the notice of
			// disconnection. The session ends.
			err = fmt.Errorf("ldapupstream: %s sent a notice of disconnection", s.c.addr)
			break
		}
		last := true
		switch m.Op.Tag {
		case opSearchEntry, opSearchReference, opIntermediate:
			last = false
		}
		s.mu.Lock()
		h := s.handlers[m.ID]
		if last {
			delete(s.handlers, m.ID)
		}
		waiting := len(s.handlers)
		s.mu.Unlock()
		if h != nil {
			s.dispatched = true
			h(m.Op.Raw, m.Controls, last, nil)
		}
		if last && waiting == 0 && s.br.Buffered() == 0 {
			// The last answer owed, and nothing more read: the
			// answers go out now rather than after the read that
			// finds nothing, one system call later.
			s.idle()
		}
	}
	switch {
	case errors.Is(err, net.ErrClosed):
		err = ErrSessionClosed
	case errors.Is(err, ldapwire.ErrTooLarge):
		err = fmt.Errorf("ldapupstream: connection to %s lost: an answer longer than %d bytes: %w", s.c.addr, s.c.opts.MaxMessageBytes, err)
	default:
		err = fmt.Errorf("ldapupstream: connection to %s lost: %w", s.c.addr, err)
	}
	s.mu.Lock()
	s.err = err
	hs := s.handlers
	s.handlers = nil
	s.mu.Unlock()
	s.nc.Close()
	for _, h := range hs {
		h(nil, nil, true, err)
	}
	s.dispatched = true // the end is an idle moment too, handlers or not
	s.idle()
	close(s.done)
}

// Send sends one request: op is its protocolOp element and controls its
// [0] Controls element (nil for none). With proxyAuthz set ("dn:…"), the
// RFC 4370 proxied authorization control naming it is added, and a request
// that carries one already is refused. fn gets every response: op is its
// protocolOp element and controls its [0] Controls element (or nil), raw
// BER valid only until fn returns (it is the reader's buffer); last is
// true for the final response, and when err is set (the session was
// lost). fn runs on the session's reader. The returned handle names the
// request for Abandon. The request is encoded into a buffer the session
// keeps and sent in one write.
func (s *Session) Send(op, controls []byte, proxyAuthz string, fn func(op, controls []byte, last bool, err error)) (int64, error) {
	var content []byte
	if proxyAuthz != "" {
		var err error
		content, err = controlsContent(controls, OIDProxiedAuthz, oidProxiedAuthzV1)
		if err != nil {
			return 0, fmt.Errorf("ldapupstream: send: add the proxied authorization control: %w", err)
		}
	}
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return 0, err
	}
	id := s.nextIDLocked()
	s.handlers[id] = fn
	s.mu.Unlock()
	s.wmu.Lock()
	var err error
	if proxyAuthz != "" {
		err = s.writeLocked(appendRequest(s.wbuf[:0], id, op, content, proxyAuthz))
	} else {
		err = s.writeLocked(ldapwire.AppendEnvelope(s.wbuf[:0], id, op, controls))
	}
	s.wmu.Unlock()
	if err != nil {
		s.mu.Lock()
		if s.handlers != nil {
			delete(s.handlers, id)
		}
		s.mu.Unlock()
		return 0, err
	}
	return id, nil
}

func (s *Session) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.writeLocked(b)
}

// writeLocked writes b, with wmu held, and keeps b's memory as the next
// request's buffer when it is small.
func (s *Session) writeLocked(b []byte) error {
	s.wdl.extend(s.nc, time.Now())
	_, err := s.nc.Write(b)
	if cap(b) <= keptBufferBytes {
		s.wbuf = b[:0]
	}
	if err != nil {
		s.nc.Close()
		return fmt.Errorf("ldapupstream: write to %s: %w", s.c.addr, err)
	}
	return nil
}

// Abandon abandons the request with this handle at the directory; its
// handler is not called again.
func (s *Session) Abandon(handle int64) error {
	s.mu.Lock()
	if s.handlers == nil {
		s.mu.Unlock()
		return nil
	}
	delete(s.handlers, handle)
	id := s.nextIDLocked()
	s.mu.Unlock()
	var op []byte
	op = append(op, classApplication|opAbandonRequest)
	var tmp []byte
	tmp = appendInt(tmp, handle)
	op = appendLength(op, len(tmp)-2)
	op = append(op, tmp[2:]...)
	return s.write(envelope(id, op, nil))
}

// roundTrip sends one request and waits for its final response.
func (s *Session) roundTrip(ctx context.Context, op []byte, controls []byte) (element, error) {
	type result struct {
		op  []byte
		err error
	}
	ch := make(chan result, 1)
	_, err := s.Send(op, controls, "", func(op, _ []byte, last bool, err error) {
		if last {
			ch <- result{append([]byte(nil), op...), err} // op is the reader's buffer
		}
	})
	if err != nil {
		return element{}, err
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return element{}, r.err
		}
		e, _, err := ldapwire.NextElement(r.op)
		if err != nil {
			return element{}, fmt.Errorf("ldapupstream: read the answer of %s: %w", s.c.addr, err)
		}
		return e, nil
	case <-ctx.Done():
		// A bind cannot be abandoned: the session's state is unknown.
		s.Close()
		return element{}, fmt.Errorf("ldapupstream: %s did not answer in time: %w", s.c.addr, ctx.Err())
	}
}

// Bind binds the session as dn (anonymously when dn and password are
// empty). ok is false when the directory refused the credentials; err is
// set when it could not be asked.
func (s *Session) Bind(ctx context.Context, dn string, password []byte) (ok bool, err error) {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opBindRequest, nil, "")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	p.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, ""))
	pw := ber.Encode(ber.ClassContext, ber.TypePrimitive, 0, nil, "")
	pw.Data.Write(password)
	p.AppendChild(pw)
	resp, err := s.roundTrip(ctx, p.Bytes(), nil)
	if err != nil {
		return false, err
	}
	if resp.Tag != opBindResponse {
		return false, fmt.Errorf("ldapupstream: %s answered a bind with operation %d", s.c.addr, resp.Tag)
	}
	code, diag, _, err := ldapResult(resp)
	if err != nil {
		return false, fmt.Errorf("ldapupstream: bind at %s: %w", s.c.addr, err)
	}
	switch {
	case code == 0:
		return true, nil
	case refused(uint16(code)):
		return false, nil
	}
	return false, fmt.Errorf("ldapupstream: bind at %s: result %d %q", s.c.addr, code, diag)
}

// BindService binds the session as the service account. A refusal is an
// error: the configuration is wrong.
func (s *Session) BindService(ctx context.Context) error {
	ok, err := s.Bind(ctx, s.c.opts.ServiceDN, []byte(string(s.c.opts.ServicePassword)))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("ldapupstream: %s refused the service account %q: check ldap.upstream.service_dn and ldap.upstream.service_password_file", s.c.addr, s.c.opts.ServiceDN)
	}
	return nil
}

// WhoAmI asks the directory who the session is bound as (RFC 4532).
func (s *Session) WhoAmI(ctx context.Context) (string, error) {
	resp, err := s.roundTrip(ctx, extendedOp(oidWhoAmI), nil)
	if err != nil {
		return "", err
	}
	if resp.Tag != opExtendedResponse {
		return "", fmt.Errorf("ldapupstream: %s answered WhoAmI with operation %d", s.c.addr, resp.Tag)
	}
	code, diag, rest, err := ldapResult(resp)
	if err != nil {
		return "", fmt.Errorf("ldapupstream: WhoAmI at %s: %w", s.c.addr, err)
	}
	if code != 0 {
		return "", fmt.Errorf("ldapupstream: WhoAmI at %s: result %d %q", s.c.addr, code, diag)
	}
	for len(rest) > 0 {
		var e element
		e, rest, err = ldapwire.NextElement(rest)
		if err != nil {
			return "", fmt.Errorf("ldapupstream: WhoAmI at %s: %w", s.c.addr, err)
		}
		if e.Class == classContext && e.Tag == 11 {
			return string(e.Content), nil
		}
	}
	return "", nil
}

// nextIDLocked returns the next message ID, wrapping after 2^31-1 and
// skipping IDs of requests still waiting for answers, so that a long-lived
// request's handler is never replaced. s.mu must be held (or the reader
// not yet started).
func (s *Session) nextIDLocked() int64 {
	for {
		s.next++
		if s.next > maxMessageID || s.next < 1 {
			s.next = 1
		}
		if _, busy := s.handlers[s.next]; !busy {
			return s.next
		}
	}
}

// Err returns the error that ended the session (nil while it is alive).
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close sends Unbind, closes the connection and waits for the reader.
// Handlers of requests still in flight get ErrSessionClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	alive := s.err == nil
	var id int64
	if alive {
		id = s.nextIDLocked()
	}
	s.mu.Unlock()
	if alive {
		s.wmu.Lock()
		s.nc.SetWriteDeadline(time.Now().Add(time.Second))
		s.nc.Write(envelope(id, []byte{classApplication | opUnbindRequest, 0}, nil))
		s.wmu.Unlock()
	}
	s.nc.Close()
	<-s.done
	return nil
}

// writeDeadline keeps a connection's write deadline at least timeout
// ahead of every write while moving it at most once per timeout: a
// deadline is a runtime timer, and a timer moved for every request can
// wake an idle thread of the Go runtime for nothing (a futex wake-up per
// request). Each write then has between timeout and twice timeout.
type writeDeadline struct{ until time.Time }

// extend makes sure that nc's write deadline is at least writeTimeout
// after now.
func (d *writeDeadline) extend(nc net.Conn, now time.Time) {
	if now.Add(writeTimeout).After(d.until) {
		d.until = now.Add(2 * writeTimeout)
		nc.SetWriteDeadline(d.until)
	}
}

// extendedOp encodes an ExtendedRequest without a value.
func extendedOp(oid string) []byte {
	p := ber.Encode(ber.ClassApplication, ber.TypeConstructed, opExtendedRequest, nil, "")
	p.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oid, ""))
	return p.Bytes()
}
