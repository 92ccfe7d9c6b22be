package imhelper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// DefaultCallTimeout is the default of Options.CallTimeout: how long a call
// whose context has no deadline may wait for Redis.
const DefaultCallTimeout = 5 * time.Second

// redisTimeout is the error of a call that ran out of time.
type redisTimeout struct {
	op  string
	err error // ctx.Err() or the Redis client's timeout error
}

func (e *redisTimeout) Error() string {
	return "imhelper: " + e.op + ": " + ErrRedisTimeout.Error() + ": " + e.err.Error()
}

func (e *redisTimeout) Unwrap() []error {
	return []error{ErrRedisTimeout, context.DeadlineExceeded, e.err}
}

// isTimeout reports an error that means Redis did not answer in time: a
// context deadline, or the Redis client's own timeouts (a socket deadline,
// its keepalive PING going unanswered).
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// ctxError is what a call returns when its context ended first.
func ctxError(op string, ctx context.Context) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return &redisTimeout{op: op, err: err}
	}
	return fmt.Errorf("imhelper: %s: %w", op, err)
}

// bound gives ctx the default deadline if it has none.
func bound(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// begin registers a call in flight, or reports ErrClosed. Close waits for
// the calls registered.
func (c *Client) begin() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return ErrClosed
	}
	c.calls.Add(1)
	return nil
}

// call runs fn, which talks to Redis, bounded by ctx's deadline or, if ctx
// has none, by Options.CallTimeout, and returns by that deadline even when
// the Redis client does not: rueidis makes a command wait for a connection
// that another caller is dialling, up to its dial timeout, whatever the
// waiting command's deadline. fn then finishes in the background (Close
// waits for it) and its result is dropped. A timeout, ours or the Redis
// client's, is reported as ErrRedisTimeout.
//
// fn runs on another goroutine: it must not write variables its caller
// reads; it returns what it has to give.
func call[T any](c *Client, ctx context.Context, op string, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	ctx, cancel := bound(ctx, c.opt.CallTimeout)
	defer cancel()
	if ctx.Err() != nil {
		return zero, ctxError(op, ctx)
	}
	if err := c.begin(); err != nil {
		return zero, err
	}
	return await(ctx, op, func(ctx context.Context) (T, error) {
		defer c.calls.Done()
		return fn(ctx)
	}, nil)
}

// await runs fn on its own goroutine and returns its outcome, or, if ctx
// ends first, ctxError at once; fn then finishes in the background, and
// late (if not nil) is given what it comes up with. A timeout of the Redis
// client's is reported as ErrRedisTimeout too.
func await[T any](ctx context.Context, op string, fn func(context.Context) (T, error), late func(T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		done <- result{v, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		select {
		case r = <-done: // it finished at the deadline: keep its outcome
		default:
			if late != nil {
				go func() { r := <-done; late(r.v, r.err) }()
			}
			var zero T
			return zero, ctxError(op, ctx)
		}
	}
	if r.err != nil && isTimeout(r.err) {
		r.err = &redisTimeout{op: op, err: r.err}
	}
	return r.v, r.err
}

// call0 is call for a function with no result but its error.
func call0(c *Client, ctx context.Context, op string, fn func(context.Context) error) error {
	_, err := call(c, ctx, op, func(ctx context.Context) (struct{}, error) { return struct{}{}, fn(ctx) })
	return err
}
