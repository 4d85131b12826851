// Package relay copies bytes both ways between a client and its upstream
// after the upstream has accepted the login (IMAP's sessions; SMTP is
// relayed command by command, LDAP message by message).
//
// On the path of a login it is the last stop: listener → decision →
// upstream login → relay. It is the only place that copies bytes after
// login; the listeners never do. It imports only proxy/revoke, whose
// ErrRevoked ends a session whose app password was deleted.
//
// A session may sit idle for hours (IMAP IDLE), so an idle session holds
// as little as the relay can manage: no copy buffer (it waits for a side
// to become readable without one, and takes one from Buffers only while
// bytes flow) and one goroutine besides its caller's.
package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"weak"

	"github.com/passgate/passgate/proxy/revoke"
)

// Copy buffer sizes. A session holds a buffer only while bytes flow: it
// waits for the next bytes without one and takes one from Buffers when
// they come, so that an idle session (an IMAP IDLE that lasts for hours)
// holds none. 16 KiB is a whole TLS record: one read under TLS takes all
// of a record from the client, and one write to the client fills one.
// See BenchmarkRun and integration's BenchmarkIMAPIdleSessionMemory.
const (
	UpBufferSize   = 16 << 10 // client → upstream
	DownBufferSize = 16 << 10 // upstream → client
)

// smallBufferSize is the buffer a direction keeps for its whole life when
// it cannot wait for bytes without reading them (a connection that is
// neither TCP nor TLS over TCP): it holds most commands, and a longer read
// goes on in a buffer from Buffers.
const smallBufferSize = 512

// Buffers lends copy buffers to the relays of a listener: a relay takes
// one when bytes arrive and gives it back before it waits again. It is
// safe for concurrent use; make it with NewBuffers.
type Buffers struct {
	pool sync.Pool    // *[]byte of UpBufferSize (= DownBufferSize)
	lent atomic.Int64 // buffers taken and not yet given back
}

// NewBuffers returns an empty set of buffers to share between relays.
func NewBuffers() *Buffers {
	b := &Buffers{}
	b.pool.New = func() any { s := make([]byte, max(UpBufferSize, DownBufferSize)); return &s }
	return b
}

// Lent returns how many buffers relays hold at the moment: none for a
// relay whose sides are both silent.
func (b *Buffers) Lent() int64 { return b.lent.Load() }

func (b *Buffers) get() *[]byte {
	b.lent.Add(1)
	return b.pool.Get().(*[]byte)
}

func (b *Buffers) put(p *[]byte) {
	b.lent.Add(-1)
	b.pool.Put(p)
}

// ownBuffers returns, for a relay without Buffers, the functions that take
// and give back each direction's buffer: one buffer a direction, held
// strongly while bytes flow and weakly while the direction waits. Each
// pair is used by one goroutine only.
func ownBuffers() (upGet func() *[]byte, upPut func(*[]byte), dnGet func() *[]byte, dnPut func(*[]byte)) {
	up, dn := &ownBuffer{size: UpBufferSize}, &ownBuffer{size: DownBufferSize}
	return up.get, up.put, dn.get, dn.put
}

// ownBuffer is one direction's buffer when the relay has no Buffers.
type ownBuffer struct {
	size int
	weak weak.Pointer[[]byte]
}

func (o *ownBuffer) get() *[]byte {
	if p := o.weak.Value(); p != nil {
		return p
	}
	b := make([]byte, o.size)
	return &b
}

func (o *ownBuffer) put(p *[]byte) { o.weak = weak.Make(p) }

// Stats is what a finished relay reports.
type Stats struct {
	BytesIn  int64  // client → upstream
	BytesOut int64  // upstream → client
	EndedBy  string // "client", "upstream", "revoked", "shutdown"
}

// Framer follows the upstream → client byte stream of a protocol, so that
// Run adds a farewell only between two of the upstream's responses.
type Framer interface {
	// Feed is given every chunk written to the client, in order, and
	// reports whether the stream so far ends where a response ends.
	Feed(p []byte) bool
}

// Options adds a protocol's manners to Run.
type Options struct {
	// Farewell, when set, returns what to say to the client when ctx
	// ends the session (cause is context.Cause(ctx): revoke.ErrRevoked, or
	// whatever the listener cancelled with), nil for nothing. It is
	// written only when Framer says the stream is between two responses
	// and no write to the client is under way; else the session just
	// closes. Nothing from the upstream follows it.
	Farewell func(cause error) []byte
	// Framer finds the boundaries for Farewell. Without one there are
	// none, and no farewell is written.
	Framer Framer
	// Buffers lends the copy buffers; a listener shares one between its
	// sessions. Without it each direction keeps its buffer only weakly
	// while it waits: the buffer serves the next bytes unless the garbage
	// collector has freed it meanwhile, and an idle session holds none
	// after the collector's next cycle.
	Buffers *Buffers
	// Parker, when set, holds the directions that have waited a while
	// without their goroutines; a listener shares one between its
	// sessions.
	Parker *Parker
	// Panicked, when set, is told of a panic in one of the relay's
	// goroutines, with its stack; the relay then ends. Without it the
	// panic is dropped and the relay ends all the same.
	Panicked func(v any, stack []byte)
}

// errStopped ends the copy to the client after a farewell.
var errStopped = errors.New("relay: stopped after the farewell")

// farewellTimeout bounds the write of a farewell to a client that does
// not read.
const farewellTimeout = 2 * time.Second

// Run copies bytes between client and upstream, with a protocol's manners
// (opts), until either side closes or ctx ends (revoke.Registry cancels it
// too). It closes both connections and waits for the relay's goroutines
// before it returns. It is Start, waited for.
func Run(ctx context.Context, client, upstream net.Conn, opts Options) Stats {
	ch := make(chan Stats, 1)
	Start(ctx, client, upstream, opts, func(st Stats) { ch <- st })
	return <-ch
}

// Start copies bytes between client and upstream, with a protocol's
// manners (opts), until either side closes or ctx ends (revoke.Registry
// cancels it too). It returns at once; done is called once, from one of
// the relay's goroutines, with the relay's figures, after both
// connections are closed and every goroutine of the relay but done's own
// has ended. ctx is watched with context.AfterFunc, which costs no
// goroutine while the session is idle. There is no idle timeout: an IMAP
// IDLE may last 29 minutes and more.
//
// While a side is silent its direction holds no copy buffer: it waits
// until the side's socket is readable (for TLS, the socket under it, once
// what TLS has buffered is drained) and only then takes a buffer from
// opts.Buffers, which it gives back before it waits again. With
// opts.Parker, a direction that has waited a while holds no goroutine
// either (see Parker).
func Start(ctx context.Context, client, upstream net.Conn, opts Options, done func(Stats)) {
	var upGet, dnGet func() *[]byte
	var upPut, dnPut func(*[]byte)
	if b := opts.Buffers; b != nil {
		upGet, upPut, dnGet, dnPut = b.get, b.put, b.get, b.put
	} else {
		upGet, upPut, dnGet, dnPut = ownBuffers()
	}
	r := &run{ctx: ctx, client: client, upstream: upstream, opts: opts, done: done, watchDone: make(chan struct{})}
	r.left.Store(2)
	// Made here, before anything that may run beside Start (the
	// goroutines, the context's watch): they set up how each side is read
	// and written.
	r.up = direction{r: r, name: "client", src: newSource(client, upGet, upPut)}
	r.down = direction{r: r, name: "upstream", src: newSource(upstream, dnGet, dnPut)}
	toUp, toClient := newSink(upstream), newSink(client)
	r.up.emit = func(p []byte) error {
		n, err := toUp.write(p)
		r.in.Add(int64(n))
		return err
	}
	r.down.emit = func(p []byte) error {
		r.wmu.Lock()
		defer r.wmu.Unlock()
		if r.stopped {
			return errStopped
		}
		w, err := toClient.write(p)
		r.out.Add(int64(w))
		if opts.Framer != nil {
			r.atBoundary = opts.Framer.Feed(p[:w])
		}
		return err
	}
	r.atBoundary = true // the relay starts right after the login's reply
	if pk := opts.Parker; pk != nil {
		for _, d := range []*direction{&r.up, &r.down} {
			if d.src.socket() != nil {
				d.wait = &waitState{clock: &pk.tick}
				d.src.idle = d.wait
				pk.track(d)
			}
		}
	}
	r.stopWatch = context.AfterFunc(ctx, r.farewell)
	go r.up.run()
	go r.down.run()
}

// run is one relay of Start.
type run struct {
	ctx              context.Context
	client, upstream net.Conn
	opts             Options
	done             func(Stats)
	up, down         direction // client → upstream, upstream → client

	in, out atomic.Int64
	first   atomic.Value // "client" or "upstream": the side that ended first
	closed  atomic.Bool  // closeBoth has begun
	left    atomic.Int32 // directions not yet ended

	// wmu orders the writes to the client: the copy and a farewell.
	wmu        sync.Mutex
	atBoundary bool // the stream to the client is between two responses
	stopped    bool // a farewell was written: nothing may follow it

	stopWatch func() bool
	watchDone chan struct{} // closed when farewell has run
}

// direction is one way of a relay.
type direction struct {
	r    *run
	name string // the side it reads: "client" or "upstream"
	src  *source
	emit func([]byte) error
	wait *waitState // with a Parker: its waits, else nil
	// parkID is the id its socket is parked with in the Parker, 0 when
	// not parked; guarded by the Parker's mu.
	parkID uint64
	ended  bool // end has run (on the direction's last goroutine)
}

// run copies the direction's side to the other until the side ends or a
// Parker takes the direction (run then returns, and the Parker calls it
// again when the side is readable). The direction that ends last hands
// the relay's figures to done.
func (d *direction) run() {
	defer d.recoverPanic()
	for {
		err := d.src.copyTo(d.emit)
		if !d.wantsPark(err) {
			break
		}
		if d.tryPark() {
			return
		}
	}
	d.end()
}

// end closes the relay after the direction's side ended, and has the
// direction that ends last report the relay's figures.
func (d *direction) end() {
	d.ended = true
	if d.wait != nil {
		d.r.opts.Parker.untrack(d)
	}
	d.r.first.CompareAndSwap(nil, d.name)
	d.r.closeBoth()
	if d.r.left.Add(-1) == 0 {
		d.r.finish()
	}
}

// recoverPanic keeps a panic in a direction (the protocol's Framer, the
// done callback) to its own relay, as a listener keeps one to its
// connection: it is handed to Options.Panicked, and a direction that
// had not ended ends, closing the relay.
func (d *direction) recoverPanic() {
	v := recover()
	if v == nil {
		return
	}
	if h := d.r.opts.Panicked; h != nil {
		h(v, debug.Stack())
	}
	if !d.ended {
		d.end()
	}
}

// finish reports the relay's figures once both directions have ended.
func (r *run) finish() {
	if !r.stopWatch() {
		<-r.watchDone // a farewell may still be under way
	}
	ended, _ := r.first.Load().(string)
	if r.ctx.Err() != nil {
		ended = "shutdown"
		if errors.Is(context.Cause(r.ctx), revoke.ErrRevoked) {
			ended = "revoked"
		}
	}
	r.done(Stats{BytesIn: r.in.Load(), BytesOut: r.out.Load(), EndedBy: ended})
}

// farewell runs when ctx ends: it says the protocol's farewell when the
// stream to the client is between two responses, and closes both sides.
func (r *run) farewell() {
	defer close(r.watchDone)
	opts := r.opts
	if opts.Farewell != nil && opts.Framer != nil && r.wmu.TryLock() {
		if r.atBoundary {
			if msg := opts.Farewell(context.Cause(r.ctx)); len(msg) > 0 {
				_ = r.client.SetWriteDeadline(time.Now().Add(farewellTimeout))
				_, _ = r.client.Write(msg)
			}
		}
		// Nothing from the upstream follows the farewell: the copy to
		// the client sees stopped before it writes. The lock is given
		// back before the close, which may wait for that copy to
		// return from its socket's read.
		r.stopped = true
		r.wmu.Unlock()
	}
	r.closeBoth()
}

// closeBoth ends both sides. A Close waits until no read or write of its
// socket is under way, and a direction reading a bare TCP socket writes to
// the other side from inside that socket's read (see rawRead): a deadline
// long past first wakes up any write that waits for a side that does not
// read, so that neither Close waits on a write that waits on the other
// Close. A parked direction is woken to find its side closed.
func (r *run) closeBoth() {
	r.closed.Store(true)
	if pk := r.opts.Parker; pk != nil {
		pk.unpark(r)
	}
	past := time.Unix(1, 0)
	_ = r.client.SetDeadline(past)
	_ = r.upstream.SetDeadline(past)
	r.client.Close()
	r.upstream.Close()
}

// WithBuffered returns a net.Conn whose reads first drain what r has
// already buffered from c, then read from c. Listeners use it to hand the
// relay a connection after reading ahead with a bufio.Reader (a client may
// pipeline commands behind its login).
func WithBuffered(c net.Conn, r *bufio.Reader) net.Conn {
	if r == nil || r.Buffered() == 0 {
		return c
	}
	pending := make([]byte, r.Buffered())
	_, _ = io.ReadFull(r, pending)
	return &prefixConn{Conn: c, pending: pending}
}

type prefixConn struct {
	net.Conn
	pending []byte
}

// SyscallConn hands out the socket under p once nothing read ahead is
// left (a wrapper's reads then are the socket's), so that a relay reading
// a connection wrapped around p can read the socket itself; before that,
// or over a connection without a socket, it fails.
func (p *prefixConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := p.Conn.(syscall.Conn)
	if len(p.pending) > 0 || !ok {
		return nil, errNoSocket
	}
	return sc.SyscallConn()
}

// errNoSocket: a connection that cannot hand out its socket as is.
var errNoSocket = errors.New("relay: no socket to read as is")

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
