package imhelper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Event is an online or offline transition of a client (its first socket
// opened, or its last closed).
type Event struct {
	Type   string    // "online" or "offline"
	Client string    // clientId
	Node   string    // node the client was on
	Meta   string    // metadata given to PrevConnectServer (empty for node_lost)
	Conns  int       // sockets after the transition: 1 online, 0 offline
	Time   time.Time // when the node saw it
	// Reason of an offline event: closed, kicked, moved, drain, node_lost,
	// slow or timeout.
	Reason string
	// StreamID is the Redis Stream entry id (ConsumeEvents only).
	StreamID string
}

func toEvent(w wire.Event, streamID string) Event {
	return Event{Type: w.Type, Client: w.Client, Node: w.Node, Meta: w.Meta, Conns: w.Conns,
		Time: time.UnixMilli(w.TS), Reason: w.Reason, StreamID: streamID}
}

// EventBus calls onOnline and onOffline (either may be nil) for events
// published on Redis pub/sub, in order, from one goroutine, until ctx ends;
// then it returns ctx.Err(). It reconnects by itself. Delivery is at most
// once: events published while it is not subscribed are not seen; use
// ConsumeEvents for events that must not be lost. It returns when ctx ends
// even while Redis hangs (the subscription then winds down in the
// background), or with ErrClosed when the Client is closed, and calls
// neither function after it returned.
func (c *Client) EventBus(ctx context.Context, onOnline, onOffline func(Event)) error {
	if err := c.begin(); err != nil {
		return err
	}
	// The subscription also ends on Close, which waits for it.
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnClose := context.AfterFunc(c.bg, cancel)
	defer stopOnClose()
	var (
		mu      sync.Mutex
		stopped bool // EventBus returned: no more calls
	)
	handle := func(e wire.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case stopped:
		case e.Type == wire.EventOnline && onOnline != nil:
			onOnline(toEvent(e, ""))
		case e.Type == wire.EventOffline && onOffline != nil:
			onOffline(toEvent(e, ""))
		}
	}
	ended := make(chan error, 1)
	go func() {
		defer c.calls.Done()
		queue := make(chan wire.Event, 4096)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for e := range queue {
				handle(e)
			}
		}()
		err := c.st.SubscribeEvents(sctx, func(payload []byte) {
			e, err := wire.DecodeEvent(payload)
			if err != nil {
				c.log.Warn("imhelper: ignored malformed event", "err", err)
				return
			}
			select {
			case queue <- e:
			case <-sctx.Done():
			}
		}, func(err error) {
			c.log.Warn("imhelper: event subscription lost; resubscribing", "err", err)
		})
		close(queue)
		<-done
		ended <- err
	}()
	var err error
	select {
	case err = <-ended:
	case <-sctx.Done():
		err = ctx.Err()
	}
	if ctx.Err() == nil && c.closed.Load() {
		err = ErrClosed
	}
	mu.Lock() // waits for a call in progress
	stopped = true
	mu.Unlock()
	return err
}

// ConsumeOptions tunes ConsumeEvents; zero values mean the defaults given.
type ConsumeOptions struct {
	// FromStart makes a new group read the whole stream; by default a new
	// group starts with events after its creation.
	FromStart bool
	// Count is the most entries read at once. Default 100.
	Count int64
	// Block is how long one read waits for new entries. Default 2s.
	Block time.Duration
	// ClaimIdle: entries another consumer of the group has held unacknowledged
	// this long are claimed (a consumer that died). Default 1 minute.
	ClaimIdle time.Duration
	// RetryDelay is the pause before a failed handler call is retried.
	// Default 1s.
	RetryDelay time.Duration
}

// ConsumeEvents reads events from the Redis Stream as consumer of group,
// creating the group if needed, and calls handler for each in order. An
// event is acknowledged (XACK) only after handler returns nil; an error
// leaves it pending and it is retried. Entries left pending by an earlier run
// of this consumer are handled first, so a consumer that restarts misses
// nothing that was appended while it was away (within the stream's cap). It
// returns ctx.Err() when ctx ends, even while Redis hangs, or ErrClosed when
// the Client is closed. Each Redis
// command it sends is bounded by Options.CallTimeout (a read by Block plus
// CallTimeout): a Redis that does not answer is logged and retried, not
// waited for; only the first XGROUP CREATE failing ends the call.
func (c *Client) ConsumeEvents(ctx context.Context, group, consumer string, handler func(context.Context, Event) error, opts ...ConsumeOptions) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnClose := context.AfterFunc(c.bg, cancel)
	defer stopOnClose()
	err := c.consumeEvents(cctx, group, consumer, handler, opts...)
	if ctx.Err() == nil && c.closed.Load() {
		return ErrClosed
	}
	return err
}

func (c *Client) consumeEvents(ctx context.Context, group, consumer string, handler func(context.Context, Event) error, opts ...ConsumeOptions) error {
	var o ConsumeOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Count <= 0 {
		o.Count = 100
	}
	if o.Block <= 0 {
		o.Block = 2 * time.Second
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = time.Minute
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = time.Second
	}
	if group == "" || consumer == "" {
		return errors.New("imhelper: ConsumeEvents needs a group and a consumer name")
	}
	// Every command is bounded, even on a ctx with no deadline (the usual
	// case here): a hung Redis is noticed, logged and retried.
	bounded := func(d time.Duration, fn func(context.Context) ([]store.StreamEvent, error)) ([]store.StreamEvent, error) {
		bctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return call(c, bctx, "ConsumeEvents", fn)
	}
	createGroup := func(fromStart bool) error {
		_, err := bounded(c.opt.CallTimeout, func(ctx context.Context) ([]store.StreamEvent, error) {
			return nil, c.st.CreateGroup(ctx, group, fromStart)
		})
		return err
	}
	if err := createGroup(o.FromStart); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("failed to create consumer group: %w", err)
	}
	pause := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
	pendingFirst := true
	lastClaim := time.Time{}
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var entries []store.StreamEvent
		var err error
		switch {
		case pendingFirst:
			// Our own unacknowledged entries, from a previous run or a failed handler.
			entries, err = bounded(c.opt.CallTimeout, func(ctx context.Context) ([]store.StreamEvent, error) {
				return c.st.ReadGroup(ctx, group, consumer, "0", o.Count, 0)
			})
			if err == nil && len(entries) == 0 {
				pendingFirst = false
				continue
			}
		case time.Since(lastClaim) > o.ClaimIdle/2:
			lastClaim = time.Now()
			entries, err = bounded(c.opt.CallTimeout, func(ctx context.Context) ([]store.StreamEvent, error) {
				return c.st.Claim(ctx, group, consumer, o.ClaimIdle, o.Count)
			})
		default:
			entries, err = bounded(o.Block+c.opt.CallTimeout, func(ctx context.Context) ([]store.StreamEvent, error) {
				return c.st.ReadGroup(ctx, group, consumer, ">", o.Count, o.Block)
			})
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, ErrClosed) {
				return err
			}
			if errors.Is(err, store.ErrNoGroup) {
				// The stream was lost (e.g. Redis restarted empty): every entry
				// in the new one is new to us, so read it from the start.
				if err := createGroup(true); err != nil {
					c.log.Warn("imhelper: recreating consumer group failed", "err", err)
				}
			} else {
				c.log.Warn("imhelper: reading events failed", "err", err)
			}
			if err := pause(o.RetryDelay); err != nil {
				return err
			}
			continue
		}
		for _, en := range entries {
			e, derr := wire.DecodeEvent(en.Payload)
			if derr == nil {
				if herr := handler(ctx, toEvent(e, en.ID)); herr != nil {
					c.log.Warn("imhelper: event handler failed; will retry", "id", en.ID, "err", herr)
					pendingFirst = true
					if err := pause(o.RetryDelay); err != nil {
						return err
					}
					break
				}
			} else {
				c.log.Warn("imhelper: dropping malformed event", "id", en.ID, "err", derr)
			}
			// The handler has done its work: acknowledge it even if ctx
			// ended meanwhile (a Ctrl-C, a shutdown), or the next run
			// handles the event a second time.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
			if err := call0(c, actx, "ConsumeEvents", func(ctx context.Context) error { return c.st.Ack(ctx, group, en.ID) }); err != nil {
				c.log.Warn("imhelper: XACK failed; the event will be handled again", "id", en.ID, "err", err)
			}
			cancel()
		}
	}
}

// ackTimeout bounds the XACK of a handled event, which runs even after the
// consumer's context has ended.
const ackTimeout = 5 * time.Second
