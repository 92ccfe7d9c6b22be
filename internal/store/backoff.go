package store

import (
	"context"
	"time"
)

// Backoff spaces out reconnects to Redis: 50 ms doubling up to 2 s. The
// zero value is ready to use.
type Backoff struct{ next time.Duration }

// Wait sleeps for the next delay or until ctx ends.
func (b *Backoff) Wait(ctx context.Context) error {
	if b.next == 0 {
		b.next = 50 * time.Millisecond
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, 2*time.Second)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Reset starts the delays again from the shortest, after a success.
func (b *Backoff) Reset() { b.next = 0 }
