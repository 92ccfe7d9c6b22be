package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// SubscribeEvents implements Events.
func (r *Redis) SubscribeEvents(ctx context.Context, fn func([]byte), onLost func(error)) error {
	var b Backoff
	for {
		dc, release := r.rc.Dedicate()
		sub := dc.B().Subscribe().Channel(r.k.eventChannel()).Build()
		if r.cluster {
			// A sharded channel in the event stream's slot. Receive
			// returns when a slot migration unsubscribes it, and the
			// loop subscribes again where the slot now lives.
			sub = dc.B().Ssubscribe().Channel(r.k.eventChannel()).Build()
		}
		err := dc.Receive(ctx, sub, func(m rueidis.PubSubMessage) {
			fn([]byte(m.Message))
		})
		dc.Close()
		release()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if onLost != nil {
			onLost(err)
		}
		if err := b.Wait(ctx); err != nil {
			return err
		}
	}
}

// CreateGroup implements Events.
func (r *Redis) CreateGroup(ctx context.Context, group string, fromStart bool) error {
	start := "$"
	if fromStart {
		start = "0"
	}
	err := r.rc.Do(ctx, r.rc.B().XgroupCreate().Key(r.k.eventStream()).Group(group).Id(start).Mkstream().Build()).Error()
	if err != nil && !rueidis.IsRedisBusyGroup(err) {
		return err
	}
	return nil
}

// ReadGroup implements Events.
func (r *Redis) ReadGroup(ctx context.Context, group, consumer, id string, count int64, block time.Duration) ([]StreamEvent, error) {
	stream := r.k.eventStream()
	b := r.rc.B().Xreadgroup().Group(group, consumer).Count(count)
	var cmd rueidis.Completed
	if block > 0 {
		cmd = b.Block(block.Milliseconds()).Streams().Key(stream).Id(id).Build()
	} else {
		cmd = b.Streams().Key(stream).Id(id).Build()
	}
	res, err := r.rc.Do(ctx, cmd).AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, groupErr(err)
	}
	return streamEvents(res[stream]), nil
}

// Ack implements Events.
func (r *Redis) Ack(ctx context.Context, group, id string) error {
	return r.rc.Do(ctx, r.rc.B().Xack().Key(r.k.eventStream()).Group(group).Id(id).Build()).Error()
}

// Claim implements Events with XAUTOCLAIM.
func (r *Redis) Claim(ctx context.Context, group, consumer string, minIdle time.Duration, count int64) ([]StreamEvent, error) {
	res, err := r.rc.Do(ctx, r.rc.B().Xautoclaim().Key(r.k.eventStream()).Group(group).Consumer(consumer).
		MinIdleTime(fmt.Sprint(minIdle.Milliseconds())).Start("0").Count(count).Build()).ToArray()
	if err != nil || len(res) < 2 {
		return nil, groupErr(err)
	}
	entries, err := res[1].AsXRange()
	return streamEvents(entries), err
}

// groupErr maps Redis' NOGROUP error (no rueidis helper exists for it) to
// ErrNoGroup.
func groupErr(err error) error {
	if re, ok := rueidis.IsRedisErr(err); ok && strings.HasPrefix(re.Error(), "NOGROUP") {
		return fmt.Errorf("%w: %v", ErrNoGroup, err)
	}
	return err
}

func streamEvents(entries []rueidis.XRangeEntry) []StreamEvent {
	out := make([]StreamEvent, len(entries))
	for i, e := range entries {
		out[i] = StreamEvent{ID: e.ID, Payload: []byte(e.FieldValues["e"])}
	}
	return out
}
