package imserver

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// rateLimiter bounds new sockets per second for the whole node: a token
// bucket refilled continuously; nil allows everything.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64   // guarded by mu
	tokens float64   // guarded by mu
	last   time.Time // guarded by mu
}

func newRateLimiter(perSec int) *rateLimiter {
	if perSec <= 0 {
		return nil
	}
	return &rateLimiter{rate: float64(perSec), tokens: float64(perSec), last: time.Now()}
}

func (l *rateLimiter) allow() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens = min(l.rate, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// Per-source limits. Each source (sourceOf: an IPv4 address or an IPv6 /64)
// has a token bucket of connection attempts, checked before the node-wide
// one so that a flood from one source cannot spend the node's budget, and a
// count of failed tokens (missing, expired, used, malformed, foreign): each
// success halves it, and one failure is forgotten per tokenBackoffMax. The
// failure that brings the count to the limit, and each one after it, bars
// the source from token lookups for tokenBackoffBase, doubled per failure
// beyond the limit, up to tokenBackoffMax: garbage tokens cannot make the
// node a Redis amplifier. A legitimate client fetches a fresh token for
// every attempt and fails rarely.
const (
	tokenBackoffBase = time.Second
	tokenBackoffMax  = 30 * time.Second
	// sourceShards × sourcesPerShard bound the table (about 100 bytes an
	// entry). A shard that is full lumps the sources it cannot track into
	// one shared entry, so they are still limited, together.
	sourceShards    = 64
	sourcesPerShard = 1024
	// sourceSweep is how often entries that carry no state (a full
	// bucket, no failures, no backoff) are dropped.
	sourceSweep = 2 * time.Second
)

// sourceState is one source's entry; times are nanoseconds since the
// limiter's epoch.
type sourceState struct {
	tokens float64 // bucket level, at last
	last   int64
	fails  int64 // failed tokens not yet forgotten
	failAt int64 // when the last forgotten one was (or the first was counted)
	until  int64 // refused without lookup until then
}

type sourceShard struct {
	mu       sync.Mutex
	m        map[sourceKey]sourceState // guarded by mu
	overflow sourceState               // guarded by mu: the sources m has no room for
	_        [64]byte                  // keeps shards' locks off one cache line
}

type sourceLimiter struct {
	rate, burst float64 // rate 0: no per-source rate
	failLimit   int64   // 0: no token backoff
	epoch       time.Time
	clock       func() int64 // tests; nil: time since epoch
	seed        maphash.Seed
	shards      [sourceShards]sourceShard
	tracked     atomic.Int64
	untracked   func() // counts an attempt from a source the table had no room for
}

// newSourceLimiter returns nil if both limits are off (negative).
func newSourceLimiter(ratePerSec, failures int, untracked func()) *sourceLimiter {
	if ratePerSec < 0 && failures < 0 {
		return nil
	}
	l := &sourceLimiter{epoch: time.Now(), seed: maphash.MakeSeed(), untracked: untracked}
	if ratePerSec > 0 {
		l.rate, l.burst = float64(ratePerSec), 2*float64(ratePerSec)
	}
	if failures > 0 {
		l.failLimit = int64(failures)
	}
	for i := range l.shards {
		l.shards[i].m = make(map[sourceKey]sourceState)
	}
	return l
}

func (l *sourceLimiter) now() int64 {
	if l.clock != nil {
		return l.clock()
	}
	return int64(time.Since(l.epoch))
}

// Where an entry lives.
const (
	inTable  = iota
	overflow // the table had no room: the shard's shared entry
	absent   // not in the table and not created
)

// entry locks k's shard and returns k's state: from the table, the
// shard's shared overflow entry if the table has no room for k, new (if
// create) or else absent. The caller stores it back with put, which unlocks.
func (l *sourceLimiter) entry(k sourceKey, now int64, create bool) (*sourceShard, sourceState, int) {
	sh := l.shard(k)
	sh.mu.Lock()
	if st, ok := sh.m[k]; ok {
		return sh, st, inTable
	}
	if len(sh.m) >= sourcesPerShard {
		return sh, sh.overflow, overflow
	}
	if !create {
		return sh, sourceState{tokens: l.burst, last: now, failAt: now}, absent
	}
	l.tracked.Add(1)
	return sh, sourceState{tokens: l.burst, last: now, failAt: now}, inTable
}

func (l *sourceLimiter) shard(k sourceKey) *sourceShard {
	return &l.shards[maphash.Comparable(l.seed, k)%sourceShards]
}

func (l *sourceLimiter) put(sh *sourceShard, k sourceKey, st sourceState, where int) {
	switch where {
	case inTable:
		sh.m[k] = st
	case overflow:
		sh.overflow = st
	}
	sh.mu.Unlock()
}

// decay forgets one failure per tokenBackoffMax since failAt.
func (st *sourceState) decay(now int64) {
	if st.fails == 0 {
		st.failAt = now
		return
	}
	if n := (now - st.failAt) / int64(tokenBackoffMax); n > 0 {
		st.fails = max(0, st.fails-n)
		st.failAt += n * int64(tokenBackoffMax)
	}
}

// admit takes one attempt from k's bucket and reports why it is refused:
// "" (admitted), "source_rate" or "token_backoff", with when to retry.
func (l *sourceLimiter) admit(k sourceKey) (string, time.Duration) {
	if l == nil {
		return "", 0
	}
	now := l.now()
	// Without a rate, only a source with failures has an entry.
	sh, st, where := l.entry(k, now, l.rate > 0)
	if where == overflow && l.untracked != nil {
		l.untracked()
	}
	reason, retry := "", time.Duration(0)
	if l.rate > 0 {
		st.tokens = min(l.burst, st.tokens+float64(now-st.last)/1e9*l.rate)
		st.last = now
		if st.tokens < 1 {
			reason, retry = "source_rate", time.Duration((1-st.tokens)/l.rate*1e9)
		} else {
			// Spent even if the backoff below refuses, so that a source
			// hammering through its backoff finds an empty bucket after it.
			st.tokens--
		}
	}
	if reason == "" && now < st.until {
		reason, retry = "token_backoff", time.Duration(st.until-now)
	}
	l.put(sh, k, st, where)
	return reason, retry
}

// failed charges k with a failed token.
func (l *sourceLimiter) failed(k sourceKey) {
	if l == nil || l.failLimit == 0 {
		return
	}
	now := l.now()
	sh, st, where := l.entry(k, now, true)
	st.decay(now)
	st.fails++
	if excess := st.fails - l.failLimit; excess >= 0 {
		d := tokenBackoffMax
		if excess < 8 {
			d = min(d, tokenBackoffBase<<excess)
		}
		st.until = max(st.until, now+int64(d))
	}
	l.put(sh, k, st, where)
}

// succeeded halves k's failure count after a token that worked.
func (l *sourceLimiter) succeeded(k sourceKey) {
	if l == nil || l.failLimit == 0 {
		return
	}
	now := l.now()
	sh, st, where := l.entry(k, now, false)
	st.decay(now)
	st.fails /= 2
	l.put(sh, k, st, where)
}

// atRest reports whether st says nothing a fresh entry would not: its
// bucket refilled, no failures left, no backoff.
func (l *sourceLimiter) atRest(st sourceState, now int64) bool {
	if now < st.until {
		return false
	}
	if l.rate > 0 && st.tokens+float64(now-st.last)/1e9*l.rate < l.burst {
		return false
	}
	st.decay(now)
	return st.fails == 0
}

// sweep drops the entries at rest.
func (l *sourceLimiter) sweep() {
	now := l.now()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n := 0
		for k, st := range sh.m {
			if l.atRest(st, now) {
				delete(sh.m, k)
				n++
			}
		}
		sh.mu.Unlock()
		l.tracked.Add(int64(-n))
	}
}

// sweepLoop sweeps until ctx ends.
func (l *sourceLimiter) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sourceSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.sweep()
		}
	}
}
