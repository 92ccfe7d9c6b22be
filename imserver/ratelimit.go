package imserver

import (
	"sync"
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
