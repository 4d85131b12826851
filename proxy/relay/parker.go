package relay

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultParkAfter is how long a direction of a relay waits for its
// side's next bytes before a Parker parks it.
const DefaultParkAfter = 2 * time.Second

// A Parker holds the directions of idle relays without a goroutine.
//
// A relay direction that waits for its side's next bytes holds a
// goroutine, and a goroutine holds a stack of 4 KiB or more: two per
// session, for sessions that sit in IMAP IDLE for hours (a phone, an
// Outlook). A Parker watches the directions of the relays that Start
// gives it; one that has waited ParkAfter or more is woken (its read
// deadline is moved into the past), hands its socket to the Parker's own
// epoll instance and lets its goroutine end. When the socket becomes
// readable (or hangs up, or Run's closing of the relay asks for it) the
// Parker starts a goroutine that goes on where the direction stopped.
// Parking costs two system calls and a goroutine's start per wake-up of
// a session that waited for seconds; a direction that waits less never
// parks.
//
// Parking is for sockets this package reads with raw system calls (bare
// TCP, or TLS over it): on other platforms, and for other connections,
// directions wait in their goroutine as before. Make a Parker with
// NewParker and Close it when its relays have ended; it is safe for
// concurrent use.
type Parker struct {
	every     time.Duration // the sweeper's tick
	parkAfter uint32        // in ticks
	tick      atomic.Uint32
	poll      poller

	// liveMu guards live alone: the sweeper walks live under it, and
	// lets go of it between chunks of the walk, so that a sweep over
	// millions of directions holds up neither the wake-ups, parks and
	// closes (mu) nor the starts and ends of relays for long.
	// Lock order: mu before liveMu (park, ready and unpark move a
	// direction between parked and live under both).
	liveMu sync.Mutex
	live   map[*direction]struct{} // directions that may park and are not parked: the sweeper's round

	mu     sync.Mutex
	closed bool
	parked map[uint64]*direction // by the id their socket is registered with
	nextID uint64
	count  atomic.Int64 // len(parked), for Parked

	// sweepHook, when set (by tests, before the Parker's first relay),
	// is called by the sweeper in the middle of its sweep, between two
	// of the directions it looks at (where it holds no lock), with how
	// many it has found due so far.
	sweepHook func(due int)

	started   bool // the goroutines run (from the first track)
	closeOnce sync.Once
	failures  atomic.Int64  // parks the poller refused, for Failures
	stop      chan struct{} // closed by Close: ends the sweeper
	wg        sync.WaitGroup
}

// parkTick is how often the sweeper looks for directions to park (more
// often for a ParkAfter under a second); a direction parks after waiting
// between ParkAfter and ParkAfter plus one tick.
const parkTick = 500 * time.Millisecond

// ErrNoParking: the platform has no poller of passgate's own (relays
// then keep a goroutine for each direction).
var ErrNoParking = errors.New("relay: parking is not supported on this platform")

// NewParker returns a Parker that parks a direction after it has waited
// parkAfter (DefaultParkAfter when 0). Its two goroutines (the sweeper and
// the poller's wait) start with the first relay it is given. It fails
// with ErrNoParking where there is no poller, and with the system's error
// when the poller cannot be made.
func NewParker(parkAfter time.Duration) (*Parker, error) {
	if parkAfter <= 0 {
		parkAfter = DefaultParkAfter
	}
	every := min(parkTick, max(parkAfter/2, time.Millisecond))
	p := &Parker{
		every:     every,
		parkAfter: uint32(max(1, (parkAfter+every-1)/every)),
		live:      map[*direction]struct{}{},
		parked:    map[uint64]*direction{},
		stop:      make(chan struct{}),
	}
	p.tick.Store(1) // 0 is "not waiting"
	if err := p.poll.open(); err != nil {
		return nil, err
	}
	return p, nil
}

// startLocked starts the goroutines; p.mu is held.
func (p *Parker) startLocked() {
	p.started = true
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.sweep()
	}()
	go func() {
		defer p.wg.Done()
		p.poll.run(p.ready)
		p.release()
	}()
}

// Close stops the Parker: every parked direction goes on in a goroutine
// of its own, and no direction parks from now on. It waits for the
// Parker's goroutines to end.
func (p *Parker) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.release()
		close(p.stop)
		p.mu.Lock()
		started := p.started
		p.mu.Unlock()
		if started {
			err = p.poll.wake()
			p.wg.Wait()
		}
		p.poll.close()
	})
	return err
}

// release ends parking: no direction parks from now on, the sweeper has
// none to look at, and every parked direction goes on in a goroutine of
// its own. Close calls it, and so does the poller's goroutine if its
// wait ever ends before Close (the epoll instance failed): parked
// sessions then wake rather than wait for bytes no one watches.
func (p *Parker) release() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	parked := p.parked
	p.parked = map[uint64]*direction{}
	for _, d := range parked {
		d.parkID = 0
	}
	p.count.Store(0)
	p.liveMu.Lock()
	clear(p.live)
	p.liveMu.Unlock()
	p.mu.Unlock()
	for _, d := range parked {
		go d.run()
	}
}

// Parked returns how many directions are parked at the moment: two for
// each relay whose sides are both idle.
func (p *Parker) Parked() int64 { return p.count.Load() }

// Failures returns how many times the poller refused to take a socket
// (the system's limit of epoll watches, fs.epoll.max_user_watches, or
// memory): each such direction keeps its goroutine.
func (p *Parker) Failures() int64 { return p.failures.Load() }

// track has the sweeper watch d.
func (p *Parker) track(d *direction) {
	p.mu.Lock()
	ok := !p.closed
	if ok && !p.started {
		p.startLocked()
	}
	p.mu.Unlock()
	if ok {
		p.liveMu.Lock()
		p.live[d] = struct{}{}
		p.liveMu.Unlock()
	}
}

// untrack forgets d, which has ended.
func (p *Parker) untrack(d *direction) {
	p.liveMu.Lock()
	delete(p.live, d)
	p.liveMu.Unlock()
}

// sweepChunk is how many directions the sweeper looks at before it lets
// go of liveMu for a moment.
const sweepChunk = 1024

// sweep asks the directions that have waited parkAfter ticks or more to
// park, every tick, until Close. A wait that began in tick since has
// lasted at least now-since-1 whole ticks (it may have begun at the end
// of its first one): it is due once that is parkAfter. Its round holds
// only the directions that are not parked, so that a server whose
// sessions are mostly idle sweeps its few active ones, not every session.
func (p *Parker) sweep() {
	t := time.NewTicker(p.every)
	defer t.Stop()
	var due []*direction
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		now := p.tick.Add(1)
		due = due[:0]
		p.liveMu.Lock()
		i := 0
		for d := range p.live {
			if since := d.wait.since.Load(); since != 0 && now-since > p.parkAfter && !d.wait.req.Load() {
				due = append(due, d)
			}
			// A map may change between two steps of a range over
			// it: an entry deleted meanwhile is not produced, one
			// added may be skipped (until the next sweep).
			if i++; i%sweepChunk == 0 || p.sweepHook != nil {
				p.liveMu.Unlock()
				if p.sweepHook != nil {
					p.sweepHook(len(due))
				}
				p.liveMu.Lock()
			}
		}
		p.liveMu.Unlock()
		for _, d := range due {
			d.askToPark(now, p.parkAfter)
		}
		clear(due)
	}
}

// park registers d's socket with the poller and keeps d until the socket
// is readable. It reports false when d cannot park (the Parker or the
// relay is closing, or the poller refused): d then goes on waiting in its
// goroutine.
func (p *Parker) park(d *direction) bool {
	parked := false
	err := d.src.socket().Control(func(fd uintptr) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.closed || d.r.closed.Load() {
			return
		}
		p.nextID++
		id := p.nextID
		if err := p.poll.add(fd, id); err != nil {
			// ENOSPC past fs.epoll.max_user_watches, ENOMEM: the
			// direction waits in its goroutine for the rest of its
			// life, and the sweeper leaves it be.
			p.failures.Add(1)
			p.liveMu.Lock()
			delete(p.live, d)
			p.liveMu.Unlock()
			return
		}
		p.parked[id] = d
		d.parkID = id
		p.liveMu.Lock()
		delete(p.live, d) // the sweeper looks only at directions that run
		p.liveMu.Unlock()
		p.count.Add(1)
		parked = true
	})
	return err == nil && parked
}

// ready is the poller's: the socket registered as id is readable (or hung
// up). The direction parked with it, if still parked, goes on.
func (p *Parker) ready(id uint64) {
	p.mu.Lock()
	d := p.parked[id]
	if d != nil {
		delete(p.parked, id)
		d.parkID = 0
		p.liveMu.Lock()
		p.live[d] = struct{}{}
		p.liveMu.Unlock()
		p.count.Add(-1)
	}
	p.mu.Unlock()
	if d != nil {
		go d.run()
	}
}

// unpark wakes the directions of r that are parked, for the relay's
// closing: each goes on in a goroutine of its own and finds its side
// closed.
func (p *Parker) unpark(r *run) {
	var wake [2]*direction
	p.mu.Lock()
	for i, d := range []*direction{&r.up, &r.down} {
		if d.parkID != 0 && p.parked[d.parkID] == d {
			delete(p.parked, d.parkID)
			d.parkID = 0
			p.liveMu.Lock()
			p.live[d] = struct{}{} // until it ends, just after
			p.liveMu.Unlock()
			p.count.Add(-1)
			wake[i] = d
		}
	}
	p.mu.Unlock()
	for _, d := range wake {
		if d != nil {
			go d.run()
		}
	}
}

// waitState is what a direction tells its Parker about its waits.
type waitState struct {
	clock *atomic.Uint32 // the Parker's tick
	since atomic.Uint32  // tick at which the current wait began; 0: not waiting
	req   atomic.Bool    // the Parker asked the direction to park
	mu    sync.Mutex     // orders the Parker's deadline with the direction's
}

// beforeWait is called before the direction waits for its side's next
// bytes; it reports true when the direction should park instead.
func (w *waitState) beforeWait() bool {
	if w == nil {
		return false
	}
	if w.req.Load() {
		return true
	}
	w.since.Store(w.clock.Load())
	return false
}

// woke is called when a wait has ended.
func (w *waitState) woke() {
	if w != nil {
		w.since.Store(0)
	}
}

// errPark ends a direction's copy to park it.
var errPark = errors.New("relay: parked")

// askToPark wakes d from its wait to park, unless it has stopped waiting
// or the wait is not the one the sweep of tick now found due (d woke and
// waits again).
func (d *direction) askToPark(now, after uint32) {
	w := d.wait
	w.mu.Lock()
	defer w.mu.Unlock()
	if since := w.since.Load(); since == 0 || now-since <= after || d.r.closed.Load() {
		return
	}
	w.req.Store(true)
	// A read deadline long past, as closeBoth's, wakes the wait.
	_ = d.src.conn.SetReadDeadline(time.Unix(2, 0))
}

// wantsPark reports whether err, which ended d's copy, is the Parker's
// request to park.
func (d *direction) wantsPark(err error) bool {
	if d.wait == nil || d.r.closed.Load() {
		return false
	}
	return errors.Is(err, errPark) || (errors.Is(err, os.ErrDeadlineExceeded) && d.wait.req.Load())
}

// tryPark clears the Parker's request and its deadline and parks d. It
// reports false when d must go on in its goroutine.
func (d *direction) tryPark() bool {
	w := d.wait
	w.mu.Lock()
	w.req.Store(false)
	w.since.Store(0)
	err := d.src.conn.SetReadDeadline(time.Time{})
	w.mu.Unlock()
	if err != nil {
		return false
	}
	d.src.release()
	return d.r.opts.Parker.park(d)
}
