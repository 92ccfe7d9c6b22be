package store

import (
	"context"
	"time"
)

// Backoff spaces out reconnects to Redis: 50 ms doubling up to 1 s. The
// cap is how long a node may stay unsubscribed after Redis is back (or a
// Cluster replica promoted); a reconnect that fails costs one refused
// dial, so a second is cheap even with many nodes. The zero value is
// ready to use.
type Backoff struct{ next time.Duration }

// Wait sleeps for the next delay or until ctx ends.
func (b *Backoff) Wait(ctx context.Context) error {
	if b.next == 0 {
		b.next = 50 * time.Millisecond
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Reset starts the delays again from the shortest, after a success.
func (b *Backoff) Reset() { b.next = 0 }
