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
// that logged in before may try. The tables are bounded: a guesser cannot
// grow them.
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

// check says how long a login must wait, and whether it is the global
// budget (not this address) that makes it wait.
func (l *loginLimiter) check(addr, user string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.fails[limitKey{addr, user}]; f != nil && now.Before(f.until) {
		return f.until.Sub(now), false
	}
	l.refillTokens(now)
	if l.tokens < 1 {
		if t, ok := l.known[addr]; !ok || now.Sub(t) > knownFor {
			return time.Duration((1 - l.tokens) * float64(time.Minute) / float64(l.perMin)), true
		}
	}
	return 0, false
}

func (l *loginLimiter) refillTokens(now time.Time) {
	if l.refill.IsZero() {
		l.tokens, l.refill = float64(l.perMin), now
	}
	l.tokens = min(float64(l.perMin), l.tokens+now.Sub(l.refill).Minutes()*float64(l.perMin))
	l.refill = now
}

// fail records a failure; it returns the failures in a row and whether
// this one locked the address out.
func (l *loginLimiter) fail(addr, user string, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refillTokens(now)
	l.tokens = max(0, l.tokens-1)
	if l.fails == nil {
		l.fails = map[limitKey]*failures{}
	}
	k := limitKey{addr, user}
	f := l.fails[k]
	if f == nil {
		if len(l.fails) >= maxTracked {
			l.evict(now)
		}
		f = &failures{}
		l.fails[k] = f
	}
	if now.Sub(f.last) > 2*l.lockOut && now.After(f.until) {
		f.n = 0
	}
	f.n++
	f.last = now
	if f.n >= l.max {
		f.until = now.Add(l.lockOut)
		return f.n, true
	}
	return f.n, false
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

// succeed forgets an address's failures for a user and remembers the
// address as one that may log in past the global budget.
func (l *loginLimiter) succeed(addr, user string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fails, limitKey{addr, user})
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
