package ldapfront

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/passgate/passgate/backends/ldapwire"
	"github.com/passgate/passgate/backends/sockwire"
	"github.com/passgate/passgate/policy"
	"github.com/passgate/passgate/proxy/lifecycle"
	"github.com/passgate/passgate/proxy/observe"
)

// identity is who a client connection is bound as.
type identityKind int

const (
	identAnonymous identityKind = iota
	identPrimary                // verified by the directory; operations relayed as that account
	identApp                    // app password; operations relayed with proxied authorization
)

type identity struct {
	kind    identityKind
	user    string // the decision's user name
	dn      string // upstream DN
	authzID string // WhoAmI answer: "dn:…" or "u:…"; "" when anonymous
	appID   int64
	unauth  bool // anonymous through an accepted unauthenticated bind
}

// sessState is who the upstream session is bound as.
type sessState int

const (
	sessUnknown sessState = iota // not bound yet, or a bind of unknown outcome
	sessAnonymous
	sessService
	sessAccount // the client's own account (identPrimary)
)

// request is one client message waiting for the executor.
type request struct {
	msg       message
	size      int // bytes of the message, counted in conn.queuedBytes
	abandoned atomic.Bool
	barrier   chan struct{} // StartTLS: closed when nothing is in flight
}

// pending is a relayed operation waiting for upstream responses.
type pending struct {
	handle    int64 // 0 until Send has returned
	sess      Session
	abandoned bool // the client abandoned it; guarded by conn.mu
}

// conn is one client connection. The reader goroutine (serve) reads
// messages and acts at once on Unbind, Abandon and StartTLS; everything
// else goes, in order, to the executor goroutine, which runs binds one at a
// time behind the operations before them and sends relayed operations to
// the upstream session, whose reader writes the answers back. The
// executor runs only while it has requests: the reader starts it with
// the first and it ends once the queue is empty, so that an idle
// connection holds one goroutine, the reader. A Search or Compare that
// can be sent upstream at once, with nothing before it queued or
// running, the reader sends itself (runInline).
type conn struct {
	srv *Server
	// The session log line: ConnID, Proto, RemoteAddr and Start are set
	// at accept; User, Credential and Outcome are guarded by mu.
	observe.Session

	ctx    context.Context
	cancel context.CancelCauseFunc

	wmu sync.Mutex // serialises writes and guards nc, held and wdl
	nc  net.Conn
	// raw is the connection as accepted (under nc's sockwire.Socket and
	// TLS): closing it ends a write that holds wmu, which may block for
	// as long as WriteTimeout when the client does not read.
	raw  net.Conn
	held []byte        // answers that hold keeps for the next write
	wdl  deadline      // the write deadline, moved at most once per WriteTimeout
	br   *bufio.Reader // reader goroutine only
	// waitRaw is the plaintext socket's RawConn, through which the reader
	// waits for the next message without a buffer (awaitMessage); nil
	// once the connection is TLS, or when the socket cannot be waited on
	// that way. Reader goroutine only.
	waitRaw syscall.RawConn
	// waitFn is waitRaw.Read's callback, made once; waitPeeked says
	// whether this wait has looked at the socket yet.
	waitFn     func(fd uintptr) bool
	waitPeeked bool
	// The read deadline, and whether it is the idle one the reader set
	// after a bind; reader goroutine only.
	rdl       deadline
	rdlAuthed bool

	tls    atomic.Bool
	authed atomic.Bool // a bind has succeeded on this connection
	busy   atomic.Bool // the executor (or the reader, runInline) is working on a request
	// unfinished counts the requests handed to the executor that it has
	// not finished: 0 means it has nothing queued or running, and then
	// the reader may run a request itself (runInline).
	unfinished atomic.Int64
	// execOn says that an executor goroutine runs or is being started
	// (startExecutor); execs waits for it at the connection's end. Only
	// the reader starts one (execs.Add).
	execOn atomic.Bool
	execs  sync.WaitGroup

	queue chan *request
	slots chan struct{} // one token per operation in flight upstream

	mu          sync.Mutex
	queued      map[int64]*request
	queuedBytes int           // bytes of the messages waiting for the executor
	spaceFreed  chan struct{} // signalled when the executor takes a request
	inflight    map[int64]*pending
	sess        Session
	release     func() // ends the registry tracking of the current app password

	bytesIn, bytesOut atomic.Int64 // LDAP messages read and written

	// executor-only
	ident     identity
	sessState sessState
	failures  int
}

func (s *Server) newConn(nc net.Conn) *conn {
	ctx, cancel := context.WithCancelCause(s.ctx)
	c := &conn{
		srv:     s,
		Session: observe.Session{ConnID: s.nextID.Add(1), Proto: policy.LDAP.String(), RemoteAddr: lifecycle.ClientAddr(nc), Start: time.Now()},
		// Read and written with raw system calls (sockwire.Socket).
		nc:         sockwire.NewSocket(nc, nil),
		raw:        nc,
		ctx:        ctx,
		cancel:     cancel,
		queue:      make(chan *request, s.opts.MaxInFlight),
		slots:      make(chan struct{}, s.opts.MaxInFlight),
		queued:     make(map[int64]*request),
		spaceFreed: make(chan struct{}, 1),
		inflight:   make(map[int64]*pending),
	}
	return c
}

// serve runs the connection until the client leaves, Unbind, an error or
// Close.
func (c *conn) serve() {
	defer c.srv.recoverConn(c)
	defer func() {
		c.stop(nil)
		c.execs.Wait()
		c.mu.Lock()
		sess, release := c.sess, c.release
		c.sess, c.release = nil, nil
		c.mu.Unlock()
		if release != nil {
			release()
		}
		if sess != nil {
			sess.Close()
		}
		ended := "client"
		if cause := context.Cause(c.ctx); cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, io.EOF) {
			ended = cause.Error()
		}
		c.mu.Lock()
		line := c.Session
		c.mu.Unlock()
		line.BytesIn, line.BytesOut, line.Ended = c.bytesIn.Load(), c.bytesOut.Load(), ended
		line.Log(context.Background(), c.srv.log, c.srv.opts.Conns, "ldap session closed",
			slog.String("listener", c.srv.opts.Listener), slog.Bool("tls", c.tls.Load()))
	}()
	if c.srv.opts.ImplicitTLS {
		if !c.handshake() {
			return
		}
	} else if rc, ok := sockwire.RawConn(c.nc); ok {
		c.waitRaw, c.waitFn = rc, c.readable
	}
	c.br = c.srv.reader(c.nc)
	defer func() {
		// Also after a panic in the loop, which recoverConn ends.
		if c.br != nil {
			c.srv.putReader(c.br)
			c.br = nil
		}
	}()
	c.readLoop()
}

// stop ends the connection: the context is cancelled and the socket
// closed, which unblocks the reader, the executor and any write. It does
// not wait for a write in progress: a client that does not read holds
// a write (and wmu) until the write deadline, and Close, revocation and
// the upstream session's reader (whose socket cannot close while its
// read callback writes to the client) must not wait that long. Then the
// socket under TLS is closed, without TLS's close_notify, which the
// blocked write would hold up too.
func (c *conn) stop(cause error) {
	c.cancel(cause)
	if !c.wmu.TryLock() {
		c.raw.Close()
		return
	}
	c.nc.Close()
	c.wmu.Unlock()
}

// idle reports whether the connection has nothing queued, running or in
// flight (Shutdown closes such connections).
func (c *conn) idle() bool {
	return len(c.slots) == 0 && c.unfinished.Load() == 0 && len(c.queue) == 0 && !c.busy.Load()
}

// disconnectIfIdle sends a notice of disconnection and closes, as
// Shutdown does to a connection with nothing in flight; a connection that
// is writing (to a client that may not read) is left for the next round
// or for Close, so that one such client holds up neither the drain nor
// the others.
func (c *conn) disconnectIfIdle(code int, diag string) {
	if !c.idle() || !c.wmu.TryLock() {
		return
	}
	// The notice is owed to a client that reads; one that does not
	// gets noticeTimeout, not WriteTimeout.
	if c.ctx.Err() == nil {
		b := append(c.held, envelope(0, extendedResponse(code, diag, oidNoticeOfDisconnect, "", false), nil)...)
		c.held = nil
		c.nc.SetWriteDeadline(time.Now().Add(noticeTimeout))
		n, _ := c.nc.Write(b)
		c.bytesOut.Add(int64(n))
	}
	c.wmu.Unlock()
	c.stop(errors.New(diag))
}

// disconnect sends a notice of disconnection (RFC 4511 §4.4.1) and closes.
func (c *conn) disconnect(code int, diag string) {
	c.write(envelope(0, extendedResponse(code, diag, oidNoticeOfDisconnect, "", false), nil))
	c.stop(errors.New(diag))
}

// write sends one message to the client, after any answers held back
// (hold), in one write. A failed write ends the connection.
func (c *conn) write(b []byte) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b)
}

// writeLocked is write with wmu held; b may be nil to write only what is
// held.
func (c *conn) writeLocked(b []byte) bool {
	if c.ctx.Err() != nil {
		c.held = nil
		return false
	}
	if len(c.held) > 0 {
		b = append(c.held, b...)
	}
	if len(b) == 0 {
		return true
	}
	c.wdl.extendWrite(c.nc, time.Now(), c.srv.opts.WriteTimeout)
	n, err := c.nc.Write(b)
	c.bytesOut.Add(int64(n))
	c.held = c.held[:0]
	if cap(c.held) > keptHeldBytes {
		c.held = nil // a large answer: leave its memory to the collector
	}
	if err != nil {
		c.cancel(err)
		c.nc.Close()
		return false
	}
	return true
}

// hold appends an answer from the directory, under message ID id, to
// those that go out with the next write: the answers the session's
// reader passes on from one read of the directory's socket (a search's
// entries and its result, the results of pipelined requests) then cost
// one write, and the client one read, instead of one each. The session
// calls flushHeld (Session.OnIdle) before it waits for the directory, so
// that nothing is held while passgate waits; more than maxHeldBytes is
// written at once, so that a long stream of entries flows.
func (c *conn) hold(id int64, op, controls []byte) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.ctx.Err() != nil {
		return false
	}
	c.held = ldapwire.AppendEnvelope(c.held, id, op, controls)
	if len(c.held) >= maxHeldBytes {
		return c.writeLocked(nil)
	}
	return true
}

// flushHeld writes what hold kept (the upstream session's OnIdle
// function).
func (c *conn) flushHeld() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.held) > 0 {
		c.writeLocked(nil)
	}
}

// deadline moves a connection's read or write deadline lazily. A
// deadline is a runtime timer: moving it for every message can wake an
// idle thread of the Go runtime for nothing (a futex wake-up, most of
// what a small search costs passgate when it is otherwise idle). So it is
// moved only when it comes closer than the time it must leave.
type deadline struct{ until time.Time }

// extendWrite makes sure that nc's write deadline is at least timeout
// after now, moving it to twice timeout when it is not: a write has
// between timeout and twice timeout.
func (d *deadline) extendWrite(nc net.Conn, now time.Time, timeout time.Duration) {
	if now.Add(timeout).After(d.until) {
		d.until = now.Add(2 * timeout)
		nc.SetWriteDeadline(d.until)
	}
}

// extendRead makes sure that nc's read deadline is at least timeout
// after now, moving it to timeout plus slack when it is not: the client
// is then closed between timeout and timeout plus slack after its last
// message.
func (d *deadline) extendRead(nc net.Conn, now time.Time, timeout, slack time.Duration) {
	if now.Add(timeout).After(d.until) {
		d.until = now.Add(timeout + slack)
		nc.SetReadDeadline(d.until)
	}
}

// setRead sets nc's read deadline to t unless it is t already.
func (d *deadline) setRead(nc net.Conn, t time.Time) {
	if !t.Equal(d.until) {
		d.until = t
		nc.SetReadDeadline(t)
	}
}

// respond sends an LDAPResult-shaped response with the response tag of op.
func (c *conn) respond(id int64, reqTag, code int, diag string) {
	tag, ok := responseTag(reqTag)
	if !ok {
		return
	}
	c.write(envelope(id, resultOp(tag, code, diag), nil))
}

func (c *conn) handshake() bool {
	tc := tls.Server(c.nc, c.srv.opts.TLSConfig)
	ctx, cancel := context.WithTimeout(c.ctx, handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Event(ctx, c.srv.log, slog.LevelInfo, "ldap tls handshake failed", slog.Any("err", err))
		return false
	}
	c.wmu.Lock()
	c.nc = tc
	c.wdl = deadline{} // set again on the TLS connection
	c.wmu.Unlock()
	c.rdl, c.rdlAuthed = deadline{}, false
	c.tls.Store(true)
	return true
}

// setReadDeadline sets when the next read must be done: before a bind
// has succeeded, a fixed time after the connection was accepted, however
// many messages the client sends; after it, IdleTimeout from now (and at
// most idleSlack more, deadline.extendRead). Reader goroutine only.
func (c *conn) setReadDeadline(nc net.Conn, authed bool) {
	if !authed {
		c.rdl.setRead(nc, c.Start.Add(c.srv.opts.PreBindTimeout))
		return
	}
	idle := c.srv.opts.IdleTimeout
	c.rdl.extendRead(nc, time.Now(), idle, min(idle/16, idleSlack))
}

// maxMessage is the largest message accepted now: at most
// preBindMaxMessageBytes until a bind has succeeded.
func (c *conn) maxMessage() int {
	if c.authed.Load() {
		return c.srv.opts.MaxMessageBytes
	}
	return min(c.srv.opts.MaxMessageBytes, preBindMaxMessageBytes)
}

// markAuthed records a successful bind and moves the read deadline from
// the pre-bind one to the idle one.
func (c *conn) markAuthed() {
	if c.authed.Swap(true) {
		return
	}
	// The reader may be waiting with the pre-bind deadline; its next
	// message sets the idle deadline its own way (setReadDeadline).
	c.wmu.Lock()
	c.nc.SetReadDeadline(time.Now().Add(c.srv.opts.IdleTimeout))
	c.wmu.Unlock()
}

// readLoop reads messages until the connection ends.
func (c *conn) readLoop() {
	for {
		c.wmu.Lock()
		nc := c.nc
		c.wmu.Unlock()
		authed := c.authed.Load()
		if authed && !c.rdlAuthed {
			// markAuthed (on the executor) moved the deadline behind the
			// reader's back: set it again, the reader's way.
			c.rdl, c.rdlAuthed = deadline{}, true
		}
		c.setReadDeadline(nc, authed)
		if !authed && c.authed.Load() {
			c.rdl, c.rdlAuthed = deadline{}, true
			c.setReadDeadline(nc, true) // a bind succeeded meanwhile
		}
		if !c.awaitMessage() {
			return
		}
		// The cap is chosen once the next message has started to arrive,
		// so that a message sent after a successful bind's response gets
		// the bound cap. The message stays in the reader's buffer, where
		// it is valid until the next read: runInline relays it before
		// that, and a request for the executor gets a copy.
		_, err := c.br.Peek(1)
		var raw []byte
		if err == nil {
			raw, err = ldapwire.ReadMessageShared(c.br, c.maxMessage())
			c.bytesIn.Add(int64(len(raw)))
		}
		switch {
		case errors.Is(err, ldapwire.ErrTooLarge):
			c.Event(c.ctx, c.srv.log, slog.LevelWarn, "ldap message too large")
			c.disconnect(resultProtocolError, "LDAP message exceeds passgate's size limit")
			return
		case errors.Is(err, ldapwire.ErrMalformed):
			c.disconnect(resultProtocolError, "malformed LDAP message")
			return
		case err != nil:
			if !errors.Is(err, io.EOF) && c.ctx.Err() == nil {
				c.Event(c.ctx, c.srv.log, slog.LevelDebug, "ldap read ended", slog.Any("err", err))
			}
			return
		}
		msg, err := ldapwire.ParseMessage(raw)
		if err != nil || msg.ID == 0 {
			c.disconnect(resultProtocolError, "malformed LDAP message")
			return
		}
		switch msg.Op.Tag {
		case opUnbindRequest:
			return
		case opAbandonRequest:
			target, err := decodeAbandon(msg.Op)
			if err != nil {
				c.disconnect(resultProtocolError, "malformed LDAP message")
				return
			}
			c.abandon(target)
			continue
		case opExtendedRequest:
			ext, err := decodeExtended(msg.Op)
			if err != nil {
				c.disconnect(resultProtocolError, "malformed LDAP message")
				return
			}
			if ext.oid == oidStartTLS {
				if !c.startTLS(msg.ID) {
					return
				}
				continue
			}
		case opBindRequest, opSearchRequest, opModifyRequest, opAddRequest, opDelRequest,
			opModifyDNRequest, opCompareRequest:
		default:
			c.disconnect(resultProtocolError, "unknown LDAP operation")
			return
		}
		if c.runInline(msg) {
			continue
		}
		msg, _ = ldapwire.ParseMessage(append([]byte(nil), raw...)) // the executor's own copy
		r := &request{msg: msg, size: len(raw)}
		if !c.enqueue(r) {
			return
		}
	}
}

// enqueue hands r to the executor. While more than maxQueuedBytes
// (preBindQueuedBytes before a bind has succeeded) wait for it, the
// reader waits too (and so reads nothing more from the client); one
// message of any accepted size always fits. A connection that has not
// bound is still ended at its pre-bind deadline while the reader waits
// here (a client that pipelines behind a bind, against RFC 4511 §4.2.1,
// may wait for a bind that waits for the directory).
func (c *conn) enqueue(r *request) bool {
	limit := maxQueuedBytes
	if !c.authed.Load() {
		limit = preBindQueuedBytes
	}
	var dl preBindWait
	defer dl.stop()
	for {
		c.mu.Lock()
		if c.queuedBytes == 0 || c.queuedBytes+r.size <= limit {
			c.queuedBytes += r.size
			if r.barrier == nil {
				c.queued[r.msg.ID] = r
			}
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		select {
		case <-c.spaceFreed:
		case <-c.ctx.Done():
			return false
		case <-dl.expired(c):
			if !c.authed.Load() {
				c.preBindExpired()
				return false
			}
		}
	}
	c.unfinished.Add(1)
	c.startExecutor()
	for {
		select {
		case c.queue <- r:
			return true
		case <-c.ctx.Done():
			c.unfinished.Add(-1)
			return false
		case <-dl.expired(c):
			if !c.authed.Load() {
				c.unfinished.Add(-1)
				c.preBindExpired()
				return false
			}
		}
	}
}

// preBindWait is the pre-bind deadline of a reader that waits outside a
// read (enqueue), where the socket's read deadline cannot end the wait.
// Its timer is made at the first wait of a connection that has not bound;
// once fired, its channel is empty and never fires again.
type preBindWait struct{ t *time.Timer }

// expired returns a channel that fires at c's pre-bind deadline, or nil
// (never) when c has bound.
func (w *preBindWait) expired(c *conn) <-chan time.Time {
	if w.t == nil {
		if c.authed.Load() {
			return nil
		}
		w.t = time.NewTimer(time.Until(c.Start.Add(c.srv.opts.PreBindTimeout)))
	}
	return w.t.C
}

func (w *preBindWait) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// preBindExpired ends a connection that has not bound by its pre-bind
// deadline while its reader waited for the executor.
func (c *conn) preBindExpired() {
	c.Event(c.ctx, c.srv.log, slog.LevelDebug, "ldap pre-bind timeout while requests waited for the executor")
	c.stop(errors.New("pre-bind timeout"))
}

// runInline relays m from the reader, without the hand-off to the
// executor (a goroutine wake-up per operation, most of a small search's
// cost in passgate), when that changes nothing: m is a Search or Compare,
// the executor has nothing queued or running (so order is kept, and the
// executor's fields are the reader's to use until it hands on the next
// request), the upstream session is alive and bound as m needs, and a
// slot is free, so that nothing in m's path waits (a bind, the
// directory's answer, a slot) and the reader goes on reading Abandon and
// Unbind at once. It reports whether it ran m.
func (c *conn) runInline(m message) bool {
	if m.Op.Tag != opSearchRequest && m.Op.Tag != opCompareRequest {
		return false
	}
	if c.unfinished.Load() != 0 || c.srv.opts.Mode != ModeRelay || len(c.slots) == cap(c.slots) {
		return false
	}
	var want sessState
	switch c.ident.kind {
	case identApp:
		want = sessService
	case identPrimary:
		want = sessAccount
	default:
		return false
	}
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s == nil || s.Err() != nil || c.sessState != want {
		return false
	}
	c.busy.Store(true)
	c.operation(m)
	c.busy.Store(false)
	return true
}

// abandon acts on an AbandonRequest: a queued request is skipped, one in
// flight is abandoned upstream and its remaining answers dropped. A bind
// cannot be abandoned (RFC 4511 §4.11): it is answered all the same.
func (c *conn) abandon(target int64) {
	c.mu.Lock()
	if q := c.queued[target]; q != nil && q.msg.Op.Tag != opBindRequest {
		q.abandoned.Store(true)
	}
	p := c.inflight[target]
	var handle int64
	if p != nil {
		delete(c.inflight, target)
		handle = p.handle
		p.abandoned = true
	}
	c.mu.Unlock()
	if p == nil {
		return
	}
	if handle != 0 {
		// 0: Send has not returned yet; relay abandons it upstream when
		// it does, and the answers are dropped meanwhile.
		p.sess.Abandon(handle)
	}
	<-c.slots
}

// startTLS runs the StartTLS extended operation once everything before it
// is answered. Bytes the client sent after the request, before the
// handshake, are discarded.
func (c *conn) startTLS(id int64) bool {
	r := &request{barrier: make(chan struct{})}
	if !c.enqueue(r) {
		return false
	}
	// What is before it may wait for the directory: a connection that
	// has not bound still ends at its pre-bind deadline.
	var dl preBindWait
	defer dl.stop()
	for waiting := true; waiting; {
		select {
		case <-r.barrier:
			waiting = false
		case <-c.ctx.Done():
			return false
		case <-dl.expired(c):
			if !c.authed.Load() {
				c.preBindExpired()
				return false
			}
		}
	}
	switch {
	case c.tls.Load():
		c.write(envelope(id, extendedResponse(resultOperationsError, "TLS is already established", oidStartTLS, "", false), nil))
		return true
	case c.srv.opts.TLSConfig == nil:
		c.write(envelope(id, extendedResponse(resultUnavailable, "StartTLS is not configured on this passgate", oidStartTLS, "", false), nil))
		return true
	}
	// RFC 4511 §4.14.1: nothing may follow StartTLS before the response.
	// Whatever a client pipelined here stays in the old reader and is
	// dropped with it, so that plaintext cannot be injected into the TLS
	// session.
	if !c.write(envelope(id, extendedResponse(resultSuccess, "", oidStartTLS, "", false), nil)) {
		return false
	}
	if !c.handshake() {
		return false
	}
	c.waitRaw = nil       // TLS may read ahead of what the socket shows
	c.srv.putReader(c.br) // and with it whatever was pipelined in plaintext
	c.br = c.srv.reader(c.nc)
	return true
}

// readable is awaitMessage's wait callback. Its first call looks at the
// socket (a message may have come already); once the socket has been
// reported readable it says so without looking again, which saves a
// system call per message waited for. A rare readiness without bytes (an
// event the runtime's poller delivers after the reader has already read
// its bytes) then costs a read that waits holding the buffer, as every
// read did before: memory, never correctness.
func (c *conn) readable(fd uintptr) bool {
	if c.waitPeeked {
		return true
	}
	c.waitPeeked = true
	return sockwire.Readable(fd)
}

// awaitMessage lets an idle plaintext connection hold no read buffer: when
// the reader's buffer is empty, it goes back to the server's pool while
// the reader waits, on the socket itself, for the client's next bytes (or
// the read deadline, or the socket's close), and a buffer is taken again
// once they are there. Over TLS the reader keeps its buffer and waits in
// its read: TLS may hold bytes it has read ahead, which a wait on the
// socket would not see. It reports false when the wait failed and the
// connection is done. The message read before is no longer in use here:
// runInline has relayed it, and the executor has a copy.
func (c *conn) awaitMessage() bool {
	if c.waitRaw == nil || c.br.Buffered() > 0 {
		return true
	}
	c.srv.putReader(c.br)
	c.br = nil
	c.waitPeeked = false
	err := c.waitRaw.Read(c.waitFn)
	c.br = c.srv.reader(c.nc)
	if err != nil {
		if c.ctx.Err() == nil {
			c.Event(c.ctx, c.srv.log, slog.LevelDebug, "ldap read ended", slog.Any("err", err))
		}
		return false
	}
	return true
}

// startExecutor starts the executor goroutine for a request just
// counted in unfinished, unless one runs. An executor that is ending
// sets execOn false, then looks at the count once more: if this CAS
// came before that store, the second look comes after the count and
// sees the request (the executor stays); if it came after, it sees
// false and starts a new executor.
func (c *conn) startExecutor() {
	if !c.execOn.CompareAndSwap(false, true) {
		return
	}
	c.execs.Add(1)
	c.srv.executors.Add(1)
	go func() {
		defer c.execs.Done()
		defer c.srv.executors.Add(-1)
		defer c.srv.recoverConn(c)
		c.executor()
	}()
}

// executor runs queued requests in order, and ends once none is left
// (unfinished is 0), so that an idle connection holds no executor: the
// reader starts one again with the next request (startExecutor). A
// request counted after its last look starts a new one; one counted
// before it, it runs itself, unless the new one took it over.
func (c *conn) executor() {
	for {
		if c.unfinished.Load() == 0 {
			if hook := c.srv.executorEnding; hook != nil {
				hook(c)
			}
			c.execOn.Store(false)
			if c.unfinished.Load() == 0 || !c.execOn.CompareAndSwap(false, true) {
				return
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case r := <-c.queue:
			c.busy.Store(true)
			c.run(r)
			c.busy.Store(false)
			c.unfinished.Add(-1)
		}
	}
}

func (c *conn) run(r *request) {
	if r.barrier != nil {
		if c.waitIdle() {
			close(r.barrier)
		}
		return
	}
	c.mu.Lock()
	if c.queued[r.msg.ID] == r {
		delete(c.queued, r.msg.ID)
	}
	c.queuedBytes -= r.size
	c.mu.Unlock()
	select {
	case c.spaceFreed <- struct{}{}:
	default:
	}
	if r.abandoned.Load() {
		return
	}
	switch r.msg.Op.Tag {
	case opBindRequest:
		if c.waitIdle() {
			c.bind(r.msg)
		}
	case opExtendedRequest:
		ext, _ := decodeExtended(r.msg.Op) // checked by the reader
		if ext.oid == oidWhoAmI {
			c.write(envelope(r.msg.ID, extendedResponse(resultSuccess, "", "", c.ident.authzID, true), nil))
			return
		}
		c.operation(r.msg)
	default:
		c.operation(r.msg)
	}
}

// waitIdle waits until no operation is in flight upstream. Only the
// executor takes slots, so none taken now means idle.
func (c *conn) waitIdle() bool {
	if len(c.slots) == 0 {
		return true
	}
	n := cap(c.slots)
	for i := 0; i < n; i++ {
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			for ; i > 0; i-- {
				<-c.slots
			}
			return false
		}
	}
	for i := 0; i < n; i++ {
		<-c.slots
	}
	return true
}

// Messages a client sees when passgate refuses an operation.
const (
	msgBindOnly       = "passgate is in bind-only mode: only Bind, WhoAmI and Unbind are answered"
	msgAnonymousOps   = "passgate does not relay anonymous operations: bind first"
	msgAppPasswordOps = "after an app-password bind passgate relays only Search and Compare"
	msgOwnProxyAuthz  = "passgate adds the proxied authorization control itself; do not send one"
	msgUnavailable    = "the directory cannot be reached through passgate right now; try again later"
)

// operation answers or relays everything but Bind, Unbind, Abandon,
// StartTLS and WhoAmI.
func (c *conn) operation(m message) {
	tag := m.Op.Tag
	if c.srv.opts.Mode == ModeBindOnly {
		c.respond(m.ID, tag, resultUnwillingToPerform, msgBindOnly)
		return
	}
	switch c.ident.kind {
	case identAnonymous:
		if !c.srv.opts.AllowAnonymous && !(c.srv.opts.AllowUnauthenticated && c.ident.unauth) {
			c.respond(m.ID, tag, resultUnwillingToPerform, msgAnonymousOps)
			return
		}
		if !c.ensureSession(m, sessAnonymous) {
			return
		}
		c.relay(m, "")
	case identPrimary:
		if !c.ensureSession(m, sessAccount) {
			return
		}
		c.relay(m, "")
	case identApp:
		if tag != opSearchRequest && tag != opCompareRequest {
			c.respond(m.ID, tag, resultUnwillingToPerform, msgAppPasswordOps)
			return
		}
		own, err := hasProxyAuthz(m.Controls)
		if err != nil {
			c.respond(m.ID, tag, resultProtocolError, "malformed controls")
			return
		}
		if own {
			c.respond(m.ID, tag, resultUnwillingToPerform, msgOwnProxyAuthz)
			return
		}
		if !c.ensureSession(m, sessService) {
			return
		}
		c.relay(m, c.ident.authzID)
	}
}

// session returns the upstream session, opening it on first use.
func (c *conn) session() (Session, error) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(c.ctx, upstreamTimeout)
	defer cancel()
	s, err := c.srv.opts.Upstream.Open(ctx)
	if err != nil {
		return nil, err
	}
	s.OnIdle(c.flushHeld)
	c.srv.sawUpstream()
	c.mu.Lock()
	c.sess = s
	c.mu.Unlock()
	c.sessState = sessUnknown
	return s, nil
}

// reachable returns an error when the directory cannot be reached, so
// that a relay-mode bind answers unavailable (52) before anything is
// decided, whatever the secret: otherwise, with the directory down, a
// user without MFA (whose password only the directory can check) would
// get 52 where an MFA user gets 49, and the difference would tell them
// apart.
//
// The connection's own session, while alive, is proof enough. Without
// one, a new session opened by any connection within the last
// upstreamFresh is taken instead, and this connection's session is
// opened when an operation first needs it (an application that only
// binds never needs one); without either, the session is opened now.
// What is left is a window of upstreamFresh after the directory starts
// refusing new connections, in which the difference shows.
func (c *conn) reachable() error {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		if s.Err() == nil {
			return nil
		}
		c.dropSession()
	}
	if c.srv.upstreamRecentlySeen() {
		return nil
	}
	_, err := c.session()
	return err
}

// dropSession closes the upstream session after it failed or was left in
// a state passgate cannot vouch for.
func (c *conn) dropSession() {
	c.mu.Lock()
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s != nil {
		s.Close()
	}
	c.sessState = sessUnknown
}

// ensureSession makes the upstream session bound as want, answering m with
// unavailable when it cannot.
func (c *conn) ensureSession(m message, want sessState) bool {
	s, err := c.session()
	if err != nil {
		c.upstreamFailed(m, "open", err)
		return false
	}
	if c.sessState == want {
		return true
	}
	ctx, cancel := context.WithTimeout(c.ctx, upstreamTimeout)
	defer cancel()
	switch want {
	case sessService:
		err = s.BindService(ctx)
	case sessAnonymous:
		var ok bool
		ok, err = s.Bind(ctx, "", nil)
		if err == nil && !ok {
			err = errors.New("ldapfront: the directory refused an anonymous bind")
		}
	case sessAccount:
		// The account's session was lost; its password is not kept.
		err = errors.New("ldapfront: the upstream session of a bound account was lost")
	}
	if err != nil {
		c.dropSession()
		c.upstreamFailed(m, "bind", err)
		return false
	}
	c.sessState = want
	return true
}

func (c *conn) upstreamFailed(m message, op string, err error) {
	c.Event(c.ctx, c.srv.log, slog.LevelError, "ldap upstream failed", slog.String("upstream", op), slog.Any("err", err))
	c.respond(m.ID, m.Op.Tag, resultUnavailable, msgUnavailable)
}

// relay sends m upstream and arranges for the answers to reach the client
// with m's message ID.
func (c *conn) relay(m message, proxyAuthz string) {
	select {
	case c.slots <- struct{}{}:
	case <-c.ctx.Done():
		return
	}
	c.mu.Lock()
	s := c.sess
	if _, dup := c.inflight[m.ID]; dup || s == nil {
		c.mu.Unlock()
		<-c.slots
		c.respond(m.ID, m.Op.Tag, resultOperationsError, "message ID already in use")
		return
	}
	p := &pending{sess: s}
	c.inflight[m.ID] = p
	c.mu.Unlock()
	// The answers need only the message ID and the operation: the
	// request's bytes are not kept while it is in flight.
	ref := message{ID: m.ID, Op: element{Tag: m.Op.Tag}}
	h, err := s.Send(m.Op.Raw, m.Controls, proxyAuthz, func(op, controls []byte, last bool, err error) {
		c.fromUpstream(ref, p, op, controls, last, err)
	})
	c.mu.Lock()
	p.handle = h
	abandonNow := err == nil && p.abandoned
	if err != nil && c.inflight[m.ID] == p {
		delete(c.inflight, m.ID)
		c.mu.Unlock()
		<-c.slots
		c.upstreamFailed(m, "send", err)
		c.stop(err)
		return
	}
	c.mu.Unlock()
	if abandonNow {
		// The client abandoned it while Send was running, when there was
		// no handle to abandon yet.
		s.Abandon(h)
	}
}

// fromUpstream passes one upstream answer to the client.
func (c *conn) fromUpstream(m message, p *pending, op, controls []byte, last bool, err error) {
	c.mu.Lock()
	if c.inflight[m.ID] != p {
		c.mu.Unlock()
		return // abandoned
	}
	if last {
		delete(c.inflight, m.ID)
	}
	c.mu.Unlock()
	if err != nil {
		<-c.slots
		if c.ctx.Err() != nil {
			return // the client connection is closing and took the session with it
		}
		c.upstreamFailed(m, "relay", err)
		// The session is gone, and with it the identity it was bound as.
		c.disconnect(resultUnavailable, msgUnavailable)
		return
	}
	c.hold(m.ID, op, controls) // written when the session waits for more (flushHeld)
	if last {
		<-c.slots
	}
}
