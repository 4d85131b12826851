package policy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/passgate/passgate/backends/store"
)

// Lockout configures step 2 of the decision: failures are counted per
// (user, client address), per client address and per user, within
// Window; past a threshold the source is locked out for Duration, twice
// as long with each lockout in a row (up to MaxDuration). A threshold of
// 0 counts nothing; all zero switches lockout off.
//
// The counts live in Counters (the store, when several instances share
// it: each sees the others' failures, and a restart forgets nothing).
// The same wrong secret sent again from the same address counts once
// (the last three are remembered as keyed hashes), so that a device that
// retries an old password does not lock its user out. A success from an
// address forgets that address's failures of the user.
//
// From an unfamiliar address, attempts under way (in this process)
// count towards the thresholds as failures would until they end, so
// that a burst of simultaneous guesses is stopped at the threshold too,
// not only guesses one after another. Only wrong secrets count once an
// attempt has ended: not temporary failures, not a right but unusable
// secret (an expired app password).
//
// It is smart, as design.md asks: an address from which the user has
// logged in before is never locked out by the per-user or per-address
// count, only by failures of that user from that very address. So an
// attacker who guesses at alice's account from elsewhere, or at many
// accounts from an office's shared address, does not lock alice out of
// her own devices.
//
// The portal's codes (authenticator app, recovery codes) count apart
// from passwords, under the user's own second-factor name with its own
// pairs and per-user count: a right password forgets the password's
// failures, never wrong codes. Which addresses are familiar is one list
// per user, written by every success that proves more than a password
// (a login with an app password or a primary password on a protocol, a
// code or a passkey at the portal), not by the portal's password step:
// one who knows the password gains no familiar address by signing in
// with it, while the user's own home or office, where her mail client
// logs in every day, stays familiar for her codes too.
type Lockout struct {
	// MaxFailures locks one (user, address) pair.
	MaxFailures int
	// MaxAddressFailures locks an address for every user except those
	// who logged in from it before.
	MaxAddressFailures int
	// MaxUserFailures locks a user out of every address except those
	// the user logged in from before.
	MaxUserFailures int
	Window          time.Duration // default 24h
	Duration        time.Duration // the first lockout; default 60s
	MaxDuration     time.Duration // the longest; default 1h
}

// The lockout's defaults when a duration is zero.
const (
	DefaultLockoutWindow      = 24 * time.Hour
	DefaultLockoutDuration    = 60 * time.Second
	DefaultLockoutMaxDuration = time.Hour
)

func (l Lockout) enabled() bool {
	return l.MaxFailures > 0 || l.MaxAddressFailures > 0 || l.MaxUserFailures > 0
}

// Counters is what the lockout needs of the place its counts live: a
// few small statements. *store.Store implements it (shared by every
// instance); nil in Options means this process's memory.
type Counters interface {
	// LockoutState reads the counters of (user, addr), of addr alone
	// and of user alone, and when user last logged in from addr.
	LockoutState(ctx context.Context, user, addr string) (store.LockoutState, error)
	// AddFailure counts one failure atomically and returns the counter.
	AddFailure(ctx context.Context, user, addr string, now, windowFrom, locksFrom time.Time, recent []byte) (store.LockoutCounter, error)
	// Lock locks the counter until until and counts a lockout in a row.
	Lock(ctx context.Context, user, addr string, now, until time.Time) error
	// LockoutTag is the keyed hash a wrong secret is remembered by.
	LockoutTag(user, addr, secret string) ([]byte, error)
}

// bothReader reads a login's counters and the login state of its first
// name in one statement (*store.Store and *store.Journal do).
type bothReader interface {
	LoginLockoutState(ctx context.Context, lockUser, lockAddr, user, secret string) (store.LockoutState, store.LoginState, error)
	Backing() *store.Store
}

// firstRead is the login state of a login's first name, read by admit
// together with the counters when the Store and the Counters are one
// database (one read instead of two); nil reads the counters alone.
type firstRead struct {
	db           bothReader
	user, secret string
	state        store.LoginState
	done         bool // state is read
}

// lockoutState reads the counters of (u, s) and, when f is set, f's
// login state with them. A name the store finds invalid is read again
// alone, so that LoginState reports it as it would without f.
func (f *firstRead) lockoutState(ctx context.Context, c Counters, u, s string) (store.LockoutState, error) {
	if f == nil {
		return c.LockoutState(ctx, u, s)
	}
	st, ls, err := f.db.LoginLockoutState(ctx, u, s, f.user, f.secret)
	if errors.Is(err, store.ErrInvalid) {
		return c.LockoutState(ctx, u, s)
	}
	if err != nil {
		return store.LockoutState{}, err
	}
	f.state, f.done = ls, true
	return st, nil
}

// pruner is a Counters that can forget what no longer counts.
type pruner interface {
	PruneLockout(ctx context.Context, now, idleBefore, familiarBefore time.Time) (int64, error)
}

// Bounds of the lockout. A user's address stays familiar for
// familiarFor after the last success from it, which is written again at
// most once per refreshFamiliar. Up to recentTags wrong secrets per pair
// are remembered. Every pruneEvery failures, the store forgets idle rows.
const (
	maxTracked      = 100_000
	maxFamiliar     = 64
	familiarFor     = 30 * 24 * time.Hour
	refreshFamiliar = 24 * time.Hour
	recentTags      = 3
	pruneEvery      = 1024
	maxUserKey      = 256
)

// admission is what admit learnt and reserved for one attempt. The Login
// holds it and settles it when it finishes.
type admission struct {
	user       string // the counters' user: the login's, or its second-factor name
	noFamiliar bool   // a success makes the address familiar not (the portal's password step)
	// alsoFamiliar is a second name whose familiar addresses a success
	// adds the address to: the codes' name for a success that proved
	// more than a password (an app password, a passkey), the login's
	// name for a code's success.
	alsoFamiliar string
	src          netip.Prefix
	srcKey       string    // src.String(), the counters' address
	keys         [3]string // pendingKeys(user, srcKey)
	addr, usr    bool      // the address and user counters count this attempt
	familiar     time.Time
	pairDirty    bool   // the pair has failures or lockouts to forget
	repeat       bool   // the secret is one of the last wrong ones
	tag          []byte // the secret's keyed hash
	recent       []byte // the pair's remembered tags
}

// limiter applies the lockout's rules to the counters, and keeps the
// attempts under way in memory.
type limiter struct {
	cfg      Lockout
	counters Counters
	mem      *memCounters // counters, when they are this process's memory

	mu       sync.Mutex
	pending  map[string]int // counter key → attempts under way
	failures atomic.Uint64
}

func newLimiter(cfg Lockout, c Counters) *limiter {
	if !cfg.enabled() {
		return nil
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultLockoutWindow
	}
	if cfg.Duration <= 0 {
		cfg.Duration = DefaultLockoutDuration
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = max(DefaultLockoutMaxDuration, cfg.Duration)
	}
	l := &limiter{cfg: cfg, counters: c, pending: make(map[string]int)}
	if c == nil {
		l.mem = newMemCounters(cfg.Window)
		l.counters = l.mem
	}
	return l
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

// lockKind is what an attempt is, for the lockout: a login (a
// protocol's), the portal's password step, a portal code, a passkey or an
// admin token.
type lockKind int

const (
	lockLogin lockKind = iota
	lockPortalPassword
	lockCode
	lockPasskey // a passkey at the portal: a login that also makes the address familiar to the codes
	lockToken   // an admin token of the API: counted under tokenKey
)

// tokenKey is the name admin-token attempts count under (the API names
// them all alike), apart from any user of that name.
func tokenKey(u string) string { return "TOKEN:" + u }

// secondFactorKey is the name u's code attempts count under.
// Its prefix has capital letters, which lockKey never returns, so that
// no user name typed at a login can count towards it.
func secondFactorKey(u string) string { return "2FA:" + u }

func pendingKeys(u, src string) (pair, addr, usr string) {
	return "p\x00" + u + "\x00" + src, "a\x00" + src, "u\x00" + u
}

func lockedAt(c store.LockoutCounter, now time.Time) bool { return now.Before(c.LockedUntil) }

// current returns c's failures in the window as of now.
func (l *limiter) current(c store.LockoutCounter, now time.Time) int {
	if c.WindowStart.IsZero() || now.Sub(c.WindowStart) >= l.cfg.Window {
		return 0
	}
	return c.Failures
}

// full reports whether failures and attempts under way reach limit.
func (l *limiter) full(c store.LockoutCounter, key string, limit int, now time.Time) bool {
	return limit > 0 && l.current(c, now)+l.pending[key] >= limit
}

// admit returns why user may not log in from addr now, or the admission
// that records the attempt as under way, for the Login to settle; an
// error when the counters cannot be read. From an unfamiliar address,
// attempts under way count towards the thresholds as failures would, so
// that a burst of simultaneous guesses is stopped there too; from a
// familiar one only finished failures count, so that a client opening
// several connections at once with the right password is never turned
// away.
//
// With first set (see firstRead), the login state of its name is read in
// the same statement as the counters and kept in first.
//
// A portal code (kind lockCode) counts under the user's second-factor
// name (secondFactorKey), apart from the password: a right password
// clears its own pair's failures, which must not also clear wrong
// codes, or one who knows the password could sign in again after each
// few wrong codes and guess on without end. The codes' familiar
// addresses are their own too, added to only by successes that proved
// more than a password: codes, passkeys and app-password logins (see
// alsoFamiliar), never a password, which a guesser of codes has.
func (l *limiter) admit(ctx context.Context, user string, addr netip.Addr, secret string, now time.Time, first *firstRead, kind lockKind) (*admission, string, error) {
	u, src := lockKey(user), source(addr)
	s := src.String()
	also := ""
	switch {
	case kind == lockCode && u != "":
		also = u
		u = secondFactorKey(u)
	case kind == lockPasskey && u != "":
		also = secondFactorKey(u)
	case kind == lockToken:
		u = tokenKey(u)
	}
	st, err := first.lockoutState(ctx, l.counters, u, s)
	if err != nil {
		return nil, "", err
	}
	var tag []byte
	if secret != "" {
		if tag, err = l.counters.LockoutTag(u, s, secret); err != nil {
			return nil, "", err
		}
	}
	familiar := !st.FamiliarSeen.IsZero() && now.Sub(st.FamiliarSeen) < familiarFor
	pk, ak, uk := pendingKeys(u, s)
	l.mu.Lock()
	defer l.mu.Unlock()
	if lockedAt(st.Pair, now) {
		return nil, "locked out: too many failures of this user from this address", nil
	}
	if !familiar {
		if lockedAt(st.Addr, now) {
			return nil, "locked out: too many failures from this address", nil
		}
		if u != "" && lockedAt(st.User, now) {
			return nil, "locked out: too many failures of this user from unfamiliar addresses", nil
		}
		if l.full(st.Pair, pk, l.cfg.MaxFailures, now) || l.full(st.Addr, ak, l.cfg.MaxAddressFailures, now) ||
			(u != "" && l.full(st.User, uk, l.cfg.MaxUserFailures, now)) {
			return nil, "locked out: too many attempts at once from an unfamiliar address", nil
		}
	}
	adm := &admission{user: u, alsoFamiliar: also, noFamiliar: kind == lockPortalPassword, src: src, srcKey: s, keys: [3]string{pk, ak, uk}, tag: tag, recent: st.Pair.Recent,
		pairDirty: st.Pair.Failures > 0 || st.Pair.Locks > 0 || !st.Pair.LockedUntil.IsZero()}
	if familiar {
		adm.familiar = st.FamiliarSeen
	}
	for i := 0; tag != nil && i+store.LockoutTagSize <= len(st.Pair.Recent); i += store.LockoutTagSize {
		if bytes.Equal(st.Pair.Recent[i:i+store.LockoutTagSize], tag) {
			adm.repeat = true
		}
	}
	if l.cfg.MaxFailures > 0 {
		l.pending[pk]++
	}
	if !familiar {
		// A user's own device with a stale password may lock itself
		// (the pair), not the address or the account.
		if adm.addr = l.cfg.MaxAddressFailures > 0; adm.addr {
			l.pending[ak]++
		}
		if adm.usr = u != "" && l.cfg.MaxUserFailures > 0; adm.usr {
			l.pending[uk]++
		}
	}
	return adm, "", nil
}

// release ends the attempt under way that adm reserved.
func (l *limiter) release(adm *admission) {
	pk, ak, uk := adm.keys[0], adm.keys[1], adm.keys[2]
	l.mu.Lock()
	defer l.mu.Unlock()
	dec := func(k string) {
		if n := l.pending[k] - 1; n > 0 {
			l.pending[k] = n
		} else {
			delete(l.pending, k)
		}
	}
	if l.cfg.MaxFailures > 0 {
		dec(pk)
	}
	if adm.addr {
		dec(ak)
	}
	if adm.usr {
		dec(uk)
	}
}

// settle ends an admitted attempt: a Failure counts in the counters (and
// may lock) unless its secret was one of the last wrong ones; anything
// else counts nothing. It returns, for a Success, what the success
// changes in the lockout (nil: nothing), for the audit event to carry;
// this process's memory applies it at once.
func (l *limiter) settle(ctx context.Context, adm *admission, now time.Time, o Outcome) (*store.LockoutNote, error) {
	l.release(adm)
	switch {
	case o == Success:
		n := l.note(adm, now)
		if n != nil && l.mem != nil {
			l.mem.apply(*n)
		}
		return n, nil
	case o != Failure || adm.repeat:
		return nil, nil
	}
	s := adm.srcKey
	var recent []byte
	if adm.tag != nil {
		recent = append(append(make([]byte, 0, recentTags*store.LockoutTagSize), adm.tag...),
			adm.recent[:min(len(adm.recent), (recentTags-1)*store.LockoutTagSize)]...)
	}
	if err := l.count(ctx, adm.user, s, l.cfg.MaxFailures, now, recent); err != nil {
		return nil, err
	}
	if adm.addr {
		if err := l.count(ctx, "", s, l.cfg.MaxAddressFailures, now, nil); err != nil {
			return nil, err
		}
	}
	if adm.usr {
		if err := l.count(ctx, adm.user, "", l.cfg.MaxUserFailures, now, nil); err != nil {
			return nil, err
		}
	}
	if p, ok := l.counters.(pruner); ok && l.failures.Add(1)%pruneEvery == 0 {
		if _, err := p.PruneLockout(ctx, now, now.Add(-l.cfg.Window-l.cfg.MaxDuration), now.Add(-familiarFor)); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// count counts a failure under (user, addr) and locks it at limit, for
// Duration doubled with each lockout in a row, up to MaxDuration.
func (l *limiter) count(ctx context.Context, user, addr string, limit int, now time.Time, recent []byte) error {
	if limit <= 0 {
		return nil
	}
	from := now.Add(-l.cfg.Window)
	c, err := l.counters.AddFailure(ctx, user, addr, now, from, from, recent)
	if err != nil {
		return fmt.Errorf("policy: count a failure in the lockout: %w", err)
	}
	if c.Failures < limit {
		return nil
	}
	d := l.cfg.Duration
	for range min(c.Locks, 20) {
		d *= 2
		if d >= l.cfg.MaxDuration {
			break
		}
	}
	if err := l.counters.Lock(ctx, user, addr, now, now.Add(min(d, l.cfg.MaxDuration))); err != nil {
		return fmt.Errorf("policy: lock out a source: %w", err)
	}
	return nil
}

// note is what a success changes: the pair's failures are forgotten
// (only when there were some) and the address becomes, or stays,
// familiar (written again at most once a day, for alsoFamiliar too),
// unless the success is the portal's password step. nil: nothing to
// write.
func (l *limiter) note(adm *admission, now time.Time) *store.LockoutNote {
	a := adm.src.Addr()
	familiar := !adm.noFamiliar && a.IsValid() && !a.IsUnspecified() && (adm.familiar.IsZero() || now.Sub(adm.familiar) >= refreshFamiliar)
	if !adm.pairDirty && !familiar {
		return nil
	}
	n := &store.LockoutNote{User: adm.user, Addr: adm.srcKey, At: now, ClearPair: adm.pairDirty, Familiar: familiar}
	if familiar {
		n.AlsoFamiliar = adm.alsoFamiliar
	}
	return n
}

// memCounters keeps the lockout's counters in this process's memory:
// the lockout of a single instance without a shared store, and of tests.
type memCounters struct {
	window time.Duration
	key    []byte

	mu       sync.Mutex
	rows     map[[2]string]*store.LockoutCounter
	familiar map[string]map[string]time.Time
	ops      int
}

func newMemCounters(window time.Duration) *memCounters {
	return &memCounters{window: window, key: randomKey(),
		rows: make(map[[2]string]*store.LockoutCounter), familiar: make(map[string]map[string]time.Time)}
}

func (m *memCounters) LockoutState(_ context.Context, user, addr string) (store.LockoutState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st store.LockoutState
	get := func(u, a string) store.LockoutCounter {
		if c := m.rows[[2]string{u, a}]; c != nil {
			cp := *c
			cp.Recent = append([]byte(nil), c.Recent...)
			return cp
		}
		return store.LockoutCounter{}
	}
	st.Pair, st.Addr, st.User = get(user, addr), get("", addr), get(user, "")
	st.FamiliarSeen = m.familiar[user][addr]
	return st, nil
}

func (m *memCounters) AddFailure(_ context.Context, user, addr string, now, windowFrom, locksFrom time.Time, recent []byte) (store.LockoutCounter, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	k := [2]string{user, addr}
	c := m.rows[k]
	if c == nil {
		if len(m.rows) >= maxTracked {
			evict(m.rows, func(c *store.LockoutCounter) bool { return !now.Before(c.LockedUntil) })
		}
		c = &store.LockoutCounter{User: user, Addr: addr, WindowStart: now}
		m.rows[k] = c
	} else if c.WindowStart.Before(windowFrom) {
		c.Failures, c.WindowStart = 0, now
	}
	if !c.LockedUntil.IsZero() && c.LockedUntil.Before(locksFrom) {
		c.Locks = 0
	}
	c.Failures++
	if recent != nil {
		c.Recent = append([]byte(nil), recent...)
	}
	return *c, nil
}

func (m *memCounters) Lock(_ context.Context, user, addr string, now, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.rows[[2]string{user, addr}]; c != nil {
		c.LockedUntil, c.Locks, c.Failures, c.WindowStart = until, c.Locks+1, 0, now
	}
	return nil
}

func (m *memCounters) LockoutTag(user, addr, secret string) ([]byte, error) {
	return tagOf(m.key, user, addr, secret), nil
}

// apply applies a success's note.
func (m *memCounters) apply(n store.LockoutNote) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n.ClearPair {
		delete(m.rows, [2]string{n.User, n.Addr})
	}
	if !n.Familiar {
		return
	}
	m.familiarize(n.User, n.Addr, n.At)
	if n.AlsoFamiliar != "" {
		m.familiarize(n.AlsoFamiliar, n.Addr, n.At)
	}
}

// familiarize records at as the last success of user from addr; m.mu is
// held.
func (m *memCounters) familiarize(user, addr string, at time.Time) {
	f := m.familiar[user]
	if f == nil {
		if len(m.familiar) >= maxTracked {
			evict(m.familiar, func(map[string]time.Time) bool { return true })
		}
		f = make(map[string]time.Time)
		m.familiar[user] = f
	}
	if _, ok := f[addr]; !ok && len(f) >= maxFamiliar {
		var oldest string
		var last time.Time
		for a, t := range f {
			if last.IsZero() || t.Before(last) {
				oldest, last = a, t
			}
		}
		delete(f, oldest)
	}
	f[addr] = at
}

// sweep drops, every 1024 calls, what neither counts nor locks any more.
func (m *memCounters) sweep(now time.Time) {
	m.ops++
	if m.ops%1024 != 0 {
		return
	}
	for k, c := range m.rows {
		if now.Sub(c.WindowStart) >= m.window && !now.Before(c.LockedUntil) {
			delete(m.rows, k)
		}
	}
	for u, f := range m.familiar {
		for a, t := range f {
			if now.Sub(t) >= familiarFor {
				delete(f, a)
			}
		}
		if len(f) == 0 {
			delete(m.familiar, u)
		}
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

// randomKey is a fresh key for memCounters' tags.
func randomKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand.Read never fails (Go 1.24)
	return k
}

// tagOf is HMAC-SHA-256(key, user, addr, secret) cut to a tag.
func tagOf(key []byte, user, addr, secret string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(user))
	m.Write([]byte{0})
	m.Write([]byte(addr))
	m.Write([]byte{0})
	m.Write([]byte(secret))
	return m.Sum(nil)[:store.LockoutTagSize]
}
