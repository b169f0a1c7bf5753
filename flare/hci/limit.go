package hci

import (
	"sync"
	"time"
)

// loginLimiter counts failed password logins per address and user, and
// in all.
//
// An address that failed max times in a row for a user is refused for
// lockOut; after that each further failure locks it again, until it has
// been quiet for twice lockOut or logs in. Past perMin failures a minute
// across all addresses (a guesser with many addresses), only addresses
// that logged in before may try. A login counts as a failure from before
// its password is checked until it proves right, so logins sent at once
// cannot get more checks than these limits allow. The tables are bounded:
// a guesser cannot grow them.
type loginLimiter struct {
	max     int
	lockOut time.Duration
	perMin  int

	mu     sync.Mutex
	fails  map[limitKey]*failures
	known  map[string]time.Time // addresses with a successful login
	tokens float64              // failures the global budget still allows
	refill time.Time
}

type limitKey struct{ addr, user string }

type failures struct {
	n           int
	last, until time.Time
}

const (
	maxTracked = 4096
	maxKnown   = 256
	knownFor   = 24 * time.Hour
)

// attempt is a login that reserve let through: its failure is already
// counted, so that logins waiting at once for a password check cannot
// all get past the limits.
type attempt struct {
	key       limitKey
	f         *failures // the entry the failure was counted in
	took      float64   // what it took from the global budget
	prevUntil time.Time // the lock before this attempt
	n         int       // failures in a row, this one included
	locked    bool      // this attempt locked the address out
}

// reserve counts a login as a failure before its password is checked,
// or says how long it must wait, and whether it is the global budget (not
// this address) that makes it wait. A reserved attempt ends with release
// (its password was not checked) or succeed; a wrong password needs
// nothing more.
func (l *loginLimiter) reserve(addr, user string, now time.Time) (attempt, time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := limitKey{addr, user}
	f := l.fails[k]
	if f != nil && now.Before(f.until) {
		return attempt{}, f.until.Sub(now), false
	}
	l.refillTokens(now)
	if l.tokens < 1 {
		if t, ok := l.known[addr]; !ok || now.Sub(t) > knownFor {
			return attempt{}, time.Duration((1 - l.tokens) * float64(time.Minute) / float64(l.perMin)), true
		}
	}
	a := attempt{key: k, took: min(1, l.tokens)}
	l.tokens -= a.took
	if f == nil {
		if l.fails == nil {
			l.fails = map[limitKey]*failures{}
		}
		if len(l.fails) >= maxTracked {
			l.evict(now)
		}
		f = &failures{}
		l.fails[k] = f
	}
	if now.Sub(f.last) > 2*l.lockOut && now.After(f.until) {
		f.n = 0
	}
	a.f, a.prevUntil = f, f.until
	f.n++
	f.last = now
	a.n = f.n
	if f.n >= l.max {
		f.until = now.Add(l.lockOut)
		a.locked = true
	}
	return a, 0, false
}

// release gives back an attempt whose password was never checked.
func (l *loginLimiter) release(a attempt) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = min(float64(l.perMin), l.tokens+a.took)
	if f := l.fails[a.key]; f != nil && f == a.f {
		f.n = max(0, f.n-1)
		if a.locked {
			f.until = a.prevUntil
		}
	}
}

func (l *loginLimiter) refillTokens(now time.Time) {
	if l.refill.IsZero() {
		l.tokens, l.refill = float64(l.perMin), now
	}
	l.tokens = min(float64(l.perMin), l.tokens+now.Sub(l.refill).Minutes()*float64(l.perMin))
	l.refill = now
}

// evict makes room: entries that would be forgotten anyway, else the one
// quiet for longest.
func (l *loginLimiter) evict(now time.Time) {
	var oldest limitKey
	var oldestAt time.Time
	for k, f := range l.fails {
		if now.Sub(f.last) > 2*l.lockOut && now.After(f.until) {
			delete(l.fails, k)
			continue
		}
		if oldestAt.IsZero() || f.last.Before(oldestAt) {
			oldest, oldestAt = k, f.last
		}
	}
	if len(l.fails) >= maxTracked {
		delete(l.fails, oldest)
	}
}

// succeed forgets an address's failures for a user, gives back what the
// attempt took from the global budget and remembers the address as one
// that may log in past that budget.
func (l *loginLimiter) succeed(a attempt, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tokens = min(float64(l.perMin), l.tokens+a.took)
	addr := a.key.addr
	delete(l.fails, a.key)
	if l.known == nil {
		l.known = map[string]time.Time{}
	}
	if _, ok := l.known[addr]; !ok && len(l.known) >= maxKnown {
		var oldest string
		var at time.Time
		for a, t := range l.known {
			if at.IsZero() || t.Before(at) {
				oldest, at = a, t
			}
		}
		delete(l.known, oldest)
	}
	l.known[addr] = now
}
