package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/passgate/passgate/backends/sockwire"
)

// sourceKind says how a direction waits for its side's next bytes.
type sourceKind int

const (
	// kindTCP: a bare socket (a *net.TCPConn, or a connection that
	// implements syscall.Conn: its bytes are its socket's), read through
	// its syscall.RawConn: the buffer is taken once the socket is
	// readable, inside the read.
	kindTCP sourceKind = iota
	// kindTLS: TLS over a socket that can be waited on without reading
	// (a bare TCP socket peeked at, or Waitable's connection): wait,
	// then read into a buffer, then drain what TLS has buffered.
	kindTLS
	// kindSmall: anything else: a blocking read into a small buffer of
	// the session's own; when it fills, reads into a pooled buffer for
	// as long as they come within smallLinger.
	kindSmall
)

// source is one side of a relay as the direction that reads it sees it.
type source struct {
	conn    net.Conn
	get     func() *[]byte // takes a copy buffer
	put     func(*[]byte)  // gives it back
	pending []byte         // read ahead before the relay (WithBuffered): sent first
	kind    sourceKind

	raw  syscall.RawConn // kindTCP: conn's; kindTLS: the socket's under TLS, when bare TCP
	wait func() error    // kindTLS over bare TCP: returns once the socket is readable
	wc   *waitConn       // kindTLS over a Waitable: its waitReadable does the same
	// framed (kindTLS over a Waitable after BeginTLS): TLS holds nothing
	// past the record a read returns, so nothing needs draining.
	framed bool

	small []byte // kindSmall

	idle    *waitState // set when a Parker may park the direction
	drained bool       // what TLS buffered before the relay was handed on

	// rawRead's state: it runs inside raw.Read, which calls it until it
	// returns true; its method value is made once per direction.
	emit  func([]byte) error // kindTCP: copyTo's emit
	rerr  error              // why rawRead returned true
	rawFn func(fd uintptr) bool
}

// newSource sets up the reading of c, whose reads take buffers with get
// and give them back with put.
func newSource(c net.Conn, get func() *[]byte, put func(*[]byte)) *source {
	s := &source{conn: c, get: get, put: put, kind: kindSmall}
	if p, ok := c.(*prefixConn); ok {
		s.pending, p.pending = p.pending, nil
		s.conn = p.Conn
	}
	switch v := s.conn.(type) {
	case *waitConn:
		if sc, ok := v.Conn.(syscall.Conn); ok && v.off == v.end {
			s.conn = v.Conn
			s.useRaw(sc)
		}
	case *tls.Conn:
		switch under := v.NetConn().(type) {
		case *waitConn:
			s.kind, s.wc, s.framed = kindTLS, under, under.framed
			under.useRaw()
		case syscall.Conn:
			if rc, ok := sockwire.RawConn(under); ok {
				s.kind, s.raw = kindTLS, rc
				s.wait = func() error { return rc.Read(sockwire.Readable) }
			}
		}
	case syscall.Conn:
		s.useRaw(v)
	}
	if s.kind == kindSmall {
		s.small = make([]byte, smallBufferSize)
	}
	return s
}

// useRaw reads c through its RawConn when the platform allows: a
// *net.TCPConn, or a connection that wraps one without changing its
// bytes and hands out its socket (a listener's connection counted until
// login, for one).
func (s *source) useRaw(c syscall.Conn) {
	rc, ok := sockwire.RawConn(c)
	if !ok {
		return
	}
	s.kind, s.raw = kindTCP, rc
	s.rawFn = s.rawRead
}

// copyTo hands everything read from the source to emit, in order, until
// the source ends or fails (io.EOF at its end) or emit fails.
func (s *source) copyTo(emit func([]byte) error) error {
	if len(s.pending) > 0 {
		p := s.pending
		s.pending = nil
		if err := emit(p); err != nil {
			return err
		}
	}
	if s.kind == kindTLS && !s.drained {
		s.drained = true
		// TLS may hold plaintext decrypted before the relay began: the
		// rest of a record of up to 16 KiB whose start a front read
		// (a login with commands or a literal pipelined behind it, past
		// the front's read buffer). Waiting on the socket would not see
		// it: it would wait for the client's next bytes, which the
		// client sends only once answered.
		if err := s.drainTLS(emit); err != nil {
			return err
		}
	}
	for {
		var err error
		switch s.kind {
		case kindTCP:
			return s.copyTCP(emit)
		case kindTLS:
			// The wait runs from this frame rather than from
			// burstTLS's, so that an idle session's goroutine
			// parks on a stack shallow enough for the garbage
			// collector to shrink it to 4 KiB.
			if s.wc != nil {
				if s.wc.off == s.wc.end && s.idle.beforeWait() {
					return errPark
				}
				err = s.wc.waitReadable()
			} else {
				if s.idle.beforeWait() {
					return errPark
				}
				err = s.wait()
			}
			s.idle.woke()
			if err == nil {
				err = s.burstTLS(emit)
			}
		default:
			err = s.burstSmall(emit)
		}
		if err != nil {
			return err
		}
	}
}

// copyTCP hands emit everything read from the socket, for the rest of
// the source's life, inside a single raw.Read: rawRead reads and emits,
// and asks raw.Read to wait whenever the socket is drained.
func (s *source) copyTCP(emit func([]byte) error) error {
	s.emit = emit
	err := s.raw.Read(s.rawFn)
	s.emit = nil
	if err != nil {
		return err
	}
	return s.rerr
}

// rawRead is raw.Read's callback, and raw.Read calls it again each time
// the socket becomes readable until it returns true (the end of the
// source: EOF, an error, or emit's error, kept in s.rerr). It reads into a
// buffer taken for the read and hands what it read to emit; it gives the
// buffer back before it asks to wait.
//
// rawRead reads until a read says EAGAIN, also after a read that
// returned less than the buffer: that does not prove the socket drained.
// A FIN that came with the last bytes is one readiness with them, and
// only the next read (0) shows it; and Linux stops a read at an urgent
// byte's mark with bytes still queued. Asking to wait after a short read
// (one system call fewer per burst) left a session whose upstream sent
// its BYE and closed with the client never closed, and a client's
// command and close with the upstream session kept open (found in
// review; TestRunSeesCloseWithLastBytes). The emit is made from inside
// the callback, and hence Run's closeBoth wakes up both sides' writes
// before it closes them: a Close waits until no read or write of its
// socket is under way, and this callback holds its socket's read while
// emit writes to the other side.
func (s *source) rawRead(fd uintptr) bool {
	s.idle.woke()
	for {
		bp := s.get()
		n, err := sockwire.Read(fd, *bp)
		switch {
		case errors.Is(err, syscall.EAGAIN):
			s.put(bp)
			if s.idle.beforeWait() {
				s.rerr = errPark
				return true
			}
			return false
		case err != nil:
			s.put(bp)
			s.rerr = os.NewSyscallError("read", err)
			return true
		case n == 0:
			s.put(bp)
			s.rerr = io.EOF
			return true
		}
		err = s.emit((*bp)[:n])
		s.put(bp)
		if err != nil {
			s.rerr = err
			return true
		}
	}
}

// socket returns the RawConn of the socket whose readability the
// direction waits for, nil when it waits otherwise (kindSmall, or TLS over
// a connection that is not a bare socket): only the first kind can park.
func (s *source) socket() syscall.RawConn {
	switch {
	case s.kind == kindTCP:
		return s.raw
	case s.kind == kindTLS && s.wc != nil && s.wc.rd != nil:
		return s.wc.rd.raw
	case s.kind == kindTLS && s.wc == nil:
		return s.raw
	}
	return nil
}

// release lets go of what a parked direction need not keep: the small
// buffer of a Waitable connection, when it holds nothing (the next read
// takes a new one).
func (s *source) release() {
	if s.wc != nil && s.wc.off == s.wc.end {
		s.wc.stash, s.wc.off, s.wc.end = nil, 0, 0
	}
}

// burstTLS reads, once the socket under TLS is readable, a record (it has
// begun to arrive) and, unless the connection is framed, what else TLS
// has buffered.
func (s *source) burstTLS(emit func([]byte) error) error {
	bp := s.get()
	defer s.put(bp)
	buf := *bp
	n, err := s.conn.Read(buf)
	if err != nil || s.framed {
		if n > 0 {
			if werr := emit(buf[:n]); werr != nil {
				return werr
			}
		}
		return err
	}
	return s.drain(buf, n, emit)
}

// drainTLS hands emit what TLS has buffered, without waiting.
func (s *source) drainTLS(emit func([]byte) error) error {
	bp := s.get()
	defer s.put(bp)
	return s.drain(*bp, 0, emit)
}

// burstSmall reads into the session's small buffer. When that fills,
// more is most likely on its way (a long command, an upload): it reads on
// into a pooled buffer, and gives the buffer back after a read that does
// not fill it or after smallLinger without bytes.
func (s *source) burstSmall(emit func([]byte) error) error {
	n, err := s.conn.Read(s.small)
	if n > 0 {
		if werr := emit(s.small[:n]); werr != nil {
			return werr
		}
	}
	if err != nil || n < len(s.small) {
		return err
	}
	bp := s.get()
	defer s.put(bp)
	buf := *bp
	for {
		if err := s.conn.SetReadDeadline(time.Now().Add(smallLinger)); err != nil {
			return err
		}
		m, err := s.conn.Read(buf)
		if m > 0 {
			if werr := emit(buf[:m]); werr != nil {
				return werr
			}
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded), err == nil && m < len(buf):
			return s.conn.SetReadDeadline(time.Time{})
		case err != nil:
			return err
		}
	}
}

// smallLinger bounds how long a direction of kindSmall keeps a pooled
// buffer waiting for the rest of a long read.
const smallLinger = 20 * time.Millisecond

// drain reads on, without waiting, what the connection has already
// buffered (TLS records received with the one just read) into buf after
// its first n bytes, and hands it all to emit. TLS keeps no state from a
// read that timed out: a record that has only begun to arrive stays
// buffered, and the rest of it makes the socket readable.
func (s *source) drain(buf []byte, n int, emit func([]byte) error) error {
	// A deadline long past: a read returns what the connection has
	// buffered, or a timeout, at once.
	if err := s.conn.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return errors.Join(emit(buf[:n]), err)
	}
	var rerr error
	for {
		if n == len(buf) {
			if err := emit(buf); err != nil {
				return err
			}
			n = 0
		}
		m, err := s.conn.Read(buf[n:])
		n += m
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				rerr = err
			}
			break
		}
	}
	if rerr == nil {
		rerr = s.conn.SetReadDeadline(time.Time{})
	}
	if n > 0 {
		if err := emit(buf[:n]); err != nil {
			return err
		}
	}
	return rerr
}

// Waitable wraps a client's connection before a TLS server is laid over
// it, so that a relay can wait for the client's next record without a
// copy buffer: it reads what has arrived into a small buffer of its own
// (smallBufferSize, taken when first needed) and gives that to TLS before
// reading the connection again. Reads, writes and everything else pass
// through; NetConn returns c. Call BeginTLS when TLS starts reading it.
func Waitable(c net.Conn) net.Conn { return &waitConn{Conn: c} }

// BeginTLS tells a Waitable connection that a TLS server reads it from
// now on: its reads then hand TLS at most the rest of one record, so that
// TLS never holds bytes of a record it has not been asked to read, and a
// relay can wait on the connection right after a read of TLS without
// draining TLS first. It does nothing for any other connection.
func BeginTLS(c net.Conn) {
	if w, ok := c.(*waitConn); ok {
		w.framed, w.hdrN, w.body = true, 0, 0
	}
}

// tlsHeaderLen is the length of a TLS record's header: type, version,
// length (RFC 8446 5.1).
const tlsHeaderLen = 5

// waitConn is Waitable's connection. Only the goroutine that reads the
// connection touches its fields.
type waitConn struct {
	net.Conn
	stash    []byte
	off, end int // stash[off:end] is read but not yet returned

	framed bool // BeginTLS: reads stop at record boundaries
	// useRaw (a relay reads and writes through TLS over the connection
	// from now on): the socket under Conn, read and written with raw
	// system calls; nil before, or without a socket.
	rd   *sockReader
	wr   *sink
	hdr  [tlsHeaderLen]byte // the current record's header, hdrN bytes of it so far
	hdrN int
	body int // the current record's body bytes not yet returned
}

// Read returns what was read ahead first, then reads c; under TLS
// (BeginTLS) it returns no byte past the end of the current record, and
// reads a record's header through the small buffer, which usually takes
// the whole of a small record with it.
func (w *waitConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.framed {
		if w.off == w.end && w.hdrN < tlsHeaderLen {
			if err := w.fill(); err != nil {
				return 0, err
			}
		}
		if w.hdrN < tlsHeaderLen {
			p = p[:min(len(p), tlsHeaderLen-w.hdrN)]
		} else {
			p = p[:min(len(p), w.body)]
		}
	}
	var n int
	var err error
	if w.off < w.end {
		n = copy(p, w.stash[w.off:w.end])
		w.off += n
	} else {
		n, err = w.read(p)
	}
	if w.framed {
		w.account(p[:n])
	}
	return n, err
}

// account follows the record framing over p, bytes just returned, which
// never run past the current record.
func (w *waitConn) account(p []byte) {
	if w.hdrN < tlsHeaderLen {
		w.hdrN += copy(w.hdr[w.hdrN:], p)
		if w.hdrN == tlsHeaderLen {
			w.body = int(w.hdr[3])<<8 | int(w.hdr[4])
		}
	} else {
		w.body -= len(p)
	}
	if w.hdrN == tlsHeaderLen && w.body == 0 {
		w.hdrN = 0
	}
}

// useRaw has w read and write the socket under it, when it has one, with
// raw system calls (backends/sockwire) from now on. Run calls it before any of
// its goroutines reads or writes the connection; TLS serialises the
// writes, and only the relay's copy from the client reads.
func (w *waitConn) useRaw() {
	rc, ok := sockwire.RawConn(w.Conn)
	if !ok {
		return
	}
	w.rd = &sockReader{raw: rc}
	w.rd.fn = w.rd.rawRead
	w.wr = &sink{conn: w.Conn, raw: rc}
	w.wr.rawFn = w.wr.rawWrite
}

func (w *waitConn) read(p []byte) (int, error) {
	if w.rd != nil {
		return w.rd.read(p)
	}
	return w.Conn.Read(p)
}

// Write writes to the connection (with raw system calls after useRaw).
func (w *waitConn) Write(p []byte) (int, error) {
	if w.wr != nil {
		return w.wr.write(p)
	}
	return w.Conn.Write(p)
}

// NetConn returns the wrapped connection.
func (w *waitConn) NetConn() net.Conn { return w.Conn }

// waitReadable returns once the connection has bytes to read (kept for
// the next Reads), or its read error.
func (w *waitConn) waitReadable() error {
	if w.off < w.end {
		return nil
	}
	return w.fill()
}

// fill reads what the connection has, at least a byte, into the small
// buffer, which must be empty.
func (w *waitConn) fill() error {
	if w.stash == nil {
		w.stash = make([]byte, smallBufferSize)
	}
	n, err := w.read(w.stash)
	w.off, w.end = 0, n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// sink writes what a direction copies to its side: through the side's
// RawConn, with raw writes (backends/sockwire), when the side is a bare socket
// (syscall.Conn, as for reading; the package's own wrappers change only
// reads), else through its Write. A sink is used by one goroutine at a
// time.
type sink struct {
	conn net.Conn
	raw  syscall.RawConn
	// rawWrite's state: what is left to write, what was written, and the
	// write's error; its method value is made once per sink.
	p     []byte
	n     int
	err   error
	rawFn func(fd uintptr) bool
}

func newSink(c net.Conn) *sink {
	s := &sink{conn: c}
	under := c
	for {
		if w, ok := under.(*waitConn); ok {
			under = w.Conn
		} else if p, ok := under.(*prefixConn); ok {
			under = p.Conn
		} else {
			break
		}
	}
	if rc, ok := sockwire.RawConn(under); ok {
		s.raw = rc
		s.rawFn = s.rawWrite
	}
	return s
}

// write writes all of p, as net.Conn's Write does (the side's write
// deadline holds), and returns how much was written.
func (s *sink) write(p []byte) (int, error) {
	if s.raw == nil {
		return s.conn.Write(p)
	}
	s.p, s.n, s.err = p, 0, nil
	err := s.raw.Write(s.rawFn)
	n, werr := s.n, s.err
	s.p, s.err = nil, nil
	if err == nil {
		err = werr
	}
	return n, err
}

// rawWrite is raw.Write's callback: it writes until all is written or
// the socket's buffer is full (then raw.Write waits until it drains).
func (s *sink) rawWrite(fd uintptr) bool {
	for len(s.p) > 0 {
		n, err := sockwire.Write(fd, s.p)
		s.n += n
		s.p = s.p[n:]
		switch {
		case errors.Is(err, syscall.EAGAIN):
			return false
		case err != nil:
			s.err = os.NewSyscallError("write", err)
			return true
		}
	}
	return true
}

// sockReader reads a socket as net.Conn's Read does (waiting for bytes,
// the read deadline holding), with raw system calls (backends/sockwire).
type sockReader struct {
	raw syscall.RawConn
	// rawRead's state; its method value is made once.
	p   []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

func (r *sockReader) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.err = p, 0, nil
	err := r.raw.Read(r.fn)
	n, rerr := r.n, r.err
	r.p, r.err = nil, nil
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// rawRead is raw.Read's callback: one read, or a wait when the socket
// has nothing yet.
func (r *sockReader) rawRead(fd uintptr) bool {
	n, err := sockwire.Read(fd, r.p)
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return false
	case err != nil:
		r.err = os.NewSyscallError("read", err)
	case n == 0:
		r.err = io.EOF
	}
	r.n = n
	return true
}
