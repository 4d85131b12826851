package policy

import (
	"crypto/sha256"
	"encoding/hex"
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
// From an unfamiliar address, attempts under way count towards the
// thresholds as failures would until they end, so that a burst of
// simultaneous guesses is stopped at the threshold too, not only guesses
// one after another. Only wrong secrets count once an attempt has ended:
// not temporary failures, not a right but unusable secret (an expired
// app password).
//
// It is smart, as design.md asks: an address from which the user has
// logged in before (in this process's memory) is never locked out by the
// per-user or per-address count, only by failures of that user from that
// very address. So an attacker who guesses at alice's account from
// elsewhere, or at many accounts from an office's shared address, does
// not lock alice out of her own devices.
type Lockout struct {
	// MaxFailures locks one (user, address) pair.
	MaxFailures int
	// MaxAddressFailures locks an address for every user except those
	// who logged in from it before.
	MaxAddressFailures int
	// MaxUserFailures locks a user out of every address except those
	// the user logged in from before.
	MaxUserFailures int
	Window          time.Duration // default 15m
	Duration        time.Duration // default 15m
}

func (l Lockout) enabled() bool {
	return l.MaxFailures > 0 || l.MaxAddressFailures > 0 || l.MaxUserFailures > 0
}

// Bounds of the lockout's memory. Past maxTracked keys in a table, an
// idle entry is evicted to make room (at random, so that an attacker
// cannot aim at one); a locked one never is. A user keeps at most
// maxFamiliar familiar addresses, each for familiarFor.
const (
	maxTracked  = 100_000
	maxFamiliar = 64
	familiarFor = 30 * 24 * time.Hour
	sweepEvery  = 1024
	maxUserKey  = 256
)

// counter counts failures in a window, the attempts under way, and
// holds a lock.
type counter struct {
	n           int // failures in the window
	pending     int // attempts admitted and not finished
	windowStart time.Time
	lockedUntil time.Time
}

func (c *counter) locked(now time.Time) bool { return c != nil && now.Before(c.lockedUntil) }

// admission is what admit reserved for one attempt. The Login holds it
// and settles it when it finishes.
type admission struct {
	user      string
	src       netip.Prefix
	addr, usr bool // the address and user counters were reserved too
}

// limiter keeps the lockout's counters in memory, per process.
type limiter struct {
	cfg Lockout

	mu        sync.Mutex
	pairs     map[string]*counter                   // user + "\x00" + address
	addrs     map[netip.Prefix]*counter             // address (IPv6: its /64)
	users     map[string]*counter                   // user
	familiar  map[string]map[netip.Prefix]time.Time // user → addresses of past successes
	ops       int
	lastSweep time.Time
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

// lockKey is the name a user's failures count under: case and spaces
// folded, and a long name (no real one is) hashed, so that junk names
// cannot make the tables large.
func lockKey(user string) string {
	u := strings.ToLower(strings.TrimSpace(user))
	if len(u) > maxUserKey {
		h := sha256.Sum256([]byte(u))
		return "#" + hex.EncodeToString(h[:])
	}
	return u
}

// admit returns why user may not log in from addr now, or the
// admission that records the attempt as under way, for the Login to
// settle. From an unfamiliar address, attempts under way count towards
// the thresholds as failures would, so that a burst of simultaneous
// guesses is stopped there too; from a familiar one only finished
// failures count, so that a client opening several connections at once
// with the right password is never turned away.
func (l *limiter) admit(user string, addr netip.Addr, now time.Time) (*admission, string) {
	u, src := lockKey(user), source(addr)
	pair := u + "\x00" + src.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	familiar := l.isFamiliar(u, src, now)
	if l.pairs[pair].locked(now) {
		return nil, "locked out: too many failures of this user from this address"
	}
	if !familiar {
		if l.addrs[src].locked(now) {
			return nil, "locked out: too many failures from this address"
		}
		if u != "" && l.users[u].locked(now) {
			return nil, "locked out: too many failures of this user from unfamiliar addresses"
		}
		if full(l.pairs[pair], l.cfg.MaxFailures, now, l.cfg) || full(l.addrs[src], l.cfg.MaxAddressFailures, now, l.cfg) ||
			(u != "" && full(l.users[u], l.cfg.MaxUserFailures, now, l.cfg)) {
			return nil, "locked out: too many attempts at once from an unfamiliar address"
		}
	}
	adm := &admission{user: u, src: src}
	reserve(l.pairs, pair, l.cfg.MaxFailures, now, l.cfg)
	if !familiar {
		// A user's own device with a stale password may lock itself
		// (the pair), not the address or the account.
		adm.addr = reserve(l.addrs, src, l.cfg.MaxAddressFailures, now, l.cfg)
		adm.usr = u != "" && reserve(l.users, u, l.cfg.MaxUserFailures, now, l.cfg)
	}
	return adm, ""
}

// settle ends an admitted attempt: a Failure counts (and may lock);
// anything else counts nothing, and a Success makes the address
// familiar.
func (l *limiter) settle(adm *admission, now time.Time, o Outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.settleAdmission(*adm, now, o == Failure)
	if o == Success && adm.src.Addr().IsValid() && !adm.src.Addr().IsUnspecified() {
		l.remember(adm.user, adm.src, now)
	}
}

func (l *limiter) isFamiliar(u string, src netip.Prefix, now time.Time) bool {
	t, ok := l.familiar[u][src]
	return ok && now.Sub(t) < familiarFor
}

// remember makes src familiar for u, forgetting u's oldest familiar
// address when u has maxFamiliar.
func (l *limiter) remember(u string, src netip.Prefix, now time.Time) {
	f := l.familiar[u]
	if f == nil {
		if len(l.familiar) >= maxTracked {
			evict(l.familiar, func(map[netip.Prefix]time.Time) bool { return true })
		}
		f = make(map[netip.Prefix]time.Time)
		l.familiar[u] = f
	}
	if _, ok := f[src]; !ok && len(f) >= maxFamiliar {
		var oldest netip.Prefix
		var at time.Time
		for a, t := range f {
			if at.IsZero() || t.Before(at) {
				oldest, at = a, t
			}
		}
		delete(f, oldest)
	}
	f[src] = now
}

// current returns c's failure count in the window as of now.
func current(c *counter, now time.Time, cfg Lockout) int {
	if c == nil || now.Sub(c.windowStart) >= cfg.Window {
		return 0
	}
	return c.n
}

// full reports whether failures and attempts under way reach limit.
func full(c *counter, limit int, now time.Time, cfg Lockout) bool {
	return limit > 0 && c != nil && current(c, now, cfg)+c.pending >= limit
}

// reserve records an attempt under way under key, and reports whether
// it did (a limit of 0 counts nothing).
func reserve[K comparable](m map[K]*counter, key K, limit int, now time.Time, cfg Lockout) bool {
	if limit <= 0 {
		return false
	}
	c := m[key]
	if c == nil {
		if len(m) >= maxTracked {
			evict(m, func(c *counter) bool { return c.pending == 0 && !now.Before(c.lockedUntil) })
		}
		c = &counter{windowStart: now}
		m[key] = c
	}
	c.pending++
	return true
}

// settleKey ends an attempt under way under key; a failure counts, and
// reaching limit locks the key for cfg.Duration.
func settleKey[K comparable](m map[K]*counter, key K, limit int, now time.Time, cfg Lockout, failed bool) {
	c := m[key]
	if c == nil || limit <= 0 {
		return
	}
	c.pending = max(c.pending-1, 0)
	if !failed {
		return
	}
	if now.Sub(c.windowStart) >= cfg.Window {
		c.n, c.windowStart = 0, now
	}
	c.n++
	if c.n >= limit {
		c.lockedUntil = now.Add(cfg.Duration)
		c.n, c.windowStart = 0, now
	}
}

// evict deletes one entry of m that may go, from wherever Go's map
// iteration starts (a random place), so that a full table makes room.
func evict[K comparable, V any](m map[K]V, mayGo func(V) bool) {
	for k, v := range m {
		if mayGo(v) {
			delete(m, k)
			return
		}
	}
}

// settleAdmission ends what adm reserved.
func (l *limiter) settleAdmission(adm admission, now time.Time, failed bool) {
	settleKey(l.pairs, adm.user+"\x00"+adm.src.String(), l.cfg.MaxFailures, now, l.cfg, failed)
	if adm.addr {
		settleKey(l.addrs, adm.src, l.cfg.MaxAddressFailures, now, l.cfg, failed)
	}
	if adm.usr {
		settleKey(l.users, adm.user, l.cfg.MaxUserFailures, now, l.cfg, failed)
	}
}

// sweep drops, every sweepEvery calls or once a minute, what neither
// counts nor locks any more. Attempts under way are never dropped: their
// Logins settle them.
func (l *limiter) sweep(now time.Time) {
	l.ops++
	if l.ops%sweepEvery != 0 && now.Sub(l.lastSweep) < time.Minute {
		return
	}
	l.lastSweep = now
	idle := func(c *counter) bool {
		return c.pending == 0 && now.Sub(c.windowStart) >= l.cfg.Window && !now.Before(c.lockedUntil)
	}
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
