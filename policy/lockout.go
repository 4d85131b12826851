package policy

import (
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Lockout configures step 2 of the decision: failures are counted per
// (user, client address), per client address and per user, within
// Window; past a threshold the source is locked out for Duration. A
// threshold of 0 counts nothing. All zero (the default) switches lockout
// off.
//
// It is smart, as design.md asks: an address from which the user has
// logged in successfully before (in this process's memory) is never
// locked out by the per-user or per-address count, only by failures of
// that user from that very address. So an attacker who guesses at
// alice's account from elsewhere, or at many accounts from an office's
// shared address, does not lock alice out of her own devices.
type Lockout struct {
	// MaxFailures locks one (user, address) pair.
	MaxFailures int
	// MaxAddressFailures locks an address for every user except those
	// who logged in from it before.
	MaxAddressFailures int
	// MaxUserFailures locks a user out of every address except those
	// the user logged in from before.
	MaxUserFailures int
	Window          time.Duration
	Duration        time.Duration
}

func (l Lockout) enabled() bool {
	return l.MaxFailures > 0 || l.MaxAddressFailures > 0 || l.MaxUserFailures > 0
}

// Bounds of the lockout's memory: past maxTracked keys in one table, new
// sources are not counted (an attacker with many addresses must not be
// able to grow passgate's memory without bound); familiar addresses are
// remembered for familiarFor.
const (
	maxTracked  = 100_000
	familiarFor = 30 * 24 * time.Hour
	sweepEvery  = 1024
)

// counter counts failures in a window and holds a lock.
type counter struct {
	n           int
	windowStart time.Time
	lockedUntil time.Time
}

// limiter keeps the lockout's counters in memory. Counters are per
// process: several passgate instances count separately.
type limiter struct {
	cfg Lockout

	mu       sync.Mutex
	pairs    map[string]*counter                   // user + "\x00" + address
	addrs    map[netip.Prefix]*counter             // address (IPv6: its /64)
	users    map[string]*counter                   // user
	familiar map[string]map[netip.Prefix]time.Time // user → addresses of past successes
	ops      int
}

func newLimiter(cfg Lockout) *limiter {
	if !cfg.enabled() {
		return nil
	}
	if cfg.Window <= 0 {
		cfg.Window = 15 * time.Minute
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 15 * time.Minute
	}
	return &limiter{
		cfg:      cfg,
		pairs:    make(map[string]*counter),
		addrs:    make(map[netip.Prefix]*counter),
		users:    make(map[string]*counter),
		familiar: make(map[string]map[netip.Prefix]time.Time),
	}
}

// source is the address a lockout counts under: an IPv4 address, or the
// /64 of an IPv6 address (one host usually holds a whole /64).
func source(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

func userKey(user string) string { return strings.ToLower(strings.TrimSpace(user)) }

// locked returns why user may not log in from addr now, or "".
func (l *limiter) locked(user string, addr netip.Addr, now time.Time) string {
	u, src := userKey(user), source(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.pairs[u+"\x00"+src.String()]; c != nil && now.Before(c.lockedUntil) {
		return "locked out: too many failures of this user from this address"
	}
	if l.isFamiliar(u, src, now) {
		return ""
	}
	if c := l.addrs[src]; c != nil && now.Before(c.lockedUntil) {
		return "locked out: too many failures from this address"
	}
	if c := l.users[u]; c != nil && now.Before(c.lockedUntil) {
		return "locked out: too many failures of this user from unfamiliar addresses"
	}
	return ""
}

func (l *limiter) isFamiliar(u string, src netip.Prefix, now time.Time) bool {
	t, ok := l.familiar[u][src]
	return ok && now.Sub(t) < familiarFor
}

// failure counts a failed login of user from addr.
func (l *limiter) failure(user string, addr netip.Addr, now time.Time) {
	u, src := userKey(user), source(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	bump(l.pairs, u+"\x00"+src.String(), l.cfg.MaxFailures, l.cfg, now)
	if l.isFamiliar(u, src, now) {
		// A user's own device with a stale password: it may lock
		// itself (the pair above), not the address or the account.
		return
	}
	bump(l.addrs, src, l.cfg.MaxAddressFailures, l.cfg, now)
	if u != "" {
		bump(l.users, u, l.cfg.MaxUserFailures, l.cfg, now)
	}
}

// success records a login of user from addr: the pair's count starts
// again and the address becomes familiar.
func (l *limiter) success(user string, addr netip.Addr, now time.Time) {
	u, src := userKey(user), source(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	delete(l.pairs, u+"\x00"+src.String())
	f := l.familiar[u]
	if f == nil {
		if len(l.familiar) >= maxTracked {
			return
		}
		f = make(map[netip.Prefix]time.Time)
		l.familiar[u] = f
	}
	if _, ok := f[src]; ok || len(f) < 64 {
		f[src] = now
	}
}

// bump counts one failure under key, locking it at max.
func bump[K comparable](m map[K]*counter, key K, max int, cfg Lockout, now time.Time) {
	if max <= 0 {
		return
	}
	c := m[key]
	if c == nil {
		if len(m) >= maxTracked {
			return // full: fail open rather than grow
		}
		c = &counter{windowStart: now}
		m[key] = c
	}
	if now.Sub(c.windowStart) >= cfg.Window {
		c.n, c.windowStart = 0, now
	}
	c.n++
	if c.n >= max {
		c.lockedUntil = now.Add(cfg.Duration)
		c.n, c.windowStart = 0, now
	}
}

// sweep drops, every sweepEvery calls, the counters that neither count
// nor lock any more.
func (l *limiter) sweep(now time.Time) {
	l.ops++
	if l.ops%sweepEvery != 0 {
		return
	}
	idle := func(c *counter) bool { return now.Sub(c.windowStart) >= l.cfg.Window && !now.Before(c.lockedUntil) }
	for k, c := range l.pairs {
		if idle(c) {
			delete(l.pairs, k)
		}
	}
	for k, c := range l.addrs {
		if idle(c) {
			delete(l.addrs, k)
		}
	}
	for k, c := range l.users {
		if idle(c) {
			delete(l.users, k)
		}
	}
	for u, f := range l.familiar {
		for a, t := range f {
			if now.Sub(t) >= familiarFor {
				delete(f, a)
			}
		}
		if len(f) == 0 {
			delete(l.familiar, u)
		}
	}
}
