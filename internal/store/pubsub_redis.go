package store

import (
	"context"
	"strings"

	"github.com/redis/rueidis"
)

// PublishNodes implements Publisher.
func (r *Redis) PublishNodes(ctx context.Context, msgs ...NodeMessage) error {
	if len(msgs) == 1 {
		return r.rc.Do(ctx, r.publish(r.k.nodeChannel(msgs[0].Node), msgs[0].Msg)).Error()
	}
	cmds := make(rueidis.Commands, len(msgs))
	for i, m := range msgs {
		cmds[i] = r.publish(r.k.nodeChannel(m.Node), m.Msg)
	}
	return firstErr(r.rc.DoMulti(ctx, cmds...))
}

// PublishChannel implements Publisher.
func (r *Redis) PublishChannel(ctx context.Context, ch string, frame []byte) error {
	return r.rc.Do(ctx, r.publish(r.k.topicChannel(ch), frame)).Error()
}

// PublishBroadcast implements Publisher.
func (r *Redis) PublishBroadcast(ctx context.Context, frame []byte) error {
	return r.rc.Do(ctx, r.publish(r.k.broadcastChannel(), frame)).Error()
}

func (r *Redis) publish(channel string, msg []byte) rueidis.Completed {
	return r.rc.B().Publish().Channel(channel).Message(rueidis.BinaryString(msg)).Build()
}

// subscribeBatch is the most channels one SUBSCRIBE names (50,000 channels
// in batches of 1,000 took 38 ms).
const subscribeBatch = 1000

// redisSub is a subscription on a dedicated connection: a plain Receive
// would share the connection that keyless commands such as PUBLISH use,
// and a slow hook would then delay every publish of the process.
type redisSub struct {
	r       *Redis
	node    string
	dc      rueidis.DedicatedClient
	release func()
	wait    <-chan error
}

// Subscribe implements Subscriber.
func (r *Redis) Subscribe(ctx context.Context, node string, onMessage func(Message)) (Subscription, error) {
	nodeCh, bcast, topics := r.k.nodeChannel(node), r.k.broadcastChannel(), r.k.topicPrefix()
	dc, release := r.rc.Dedicate()
	wait := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: func(m rueidis.PubSubMessage) {
		switch {
		case m.Channel == nodeCh:
			onMessage(Message{Kind: ToNode, Payload: m.Message})
		case m.Channel == bcast:
			onMessage(Message{Kind: ToBroadcast, Payload: m.Message})
		case strings.HasPrefix(m.Channel, topics):
			onMessage(Message{Kind: ToChannel, Channel: m.Channel[len(topics):], Payload: m.Message})
		}
	}})
	s := &redisSub{r: r, node: node, dc: dc, release: release, wait: wait}
	if err := s.subscribe(ctx, []string{nodeCh, bcast}); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *redisSub) subscribe(ctx context.Context, chans []string) error {
	for len(chans) > 0 {
		n := min(len(chans), subscribeBatch)
		if err := s.dc.Do(ctx, s.dc.B().Subscribe().Channel(chans[:n]...).Build()).Error(); err != nil {
			return err
		}
		chans = chans[n:]
	}
	return nil
}

// Topics implements Subscription.
func (s *redisSub) Topics(ctx context.Context, chans ...string) error {
	names := make([]string, len(chans))
	for i, ch := range chans {
		names[i] = s.r.k.topicChannel(ch)
	}
	return s.subscribe(ctx, names)
}

// Untopic implements Subscription.
func (s *redisSub) Untopic(ctx context.Context, ch string) error {
	return s.dc.Do(ctx, s.dc.B().Unsubscribe().Channel(s.r.k.topicChannel(ch)).Build()).Error()
}

// DropNodeChannel unsubscribes the node channel behind the subscription's
// back, leaving the connection up: the silent failure the node's probe
// exists to catch. For fault tests only.
func (s *redisSub) DropNodeChannel(ctx context.Context) error {
	return s.dc.Do(ctx, s.dc.B().Unsubscribe().Channel(s.r.k.nodeChannel(s.node)).Build()).Error()
}

// Done implements Subscription.
func (s *redisSub) Done() <-chan error { return s.wait }

// Close implements Subscription. It closes before it releases: releasing a
// live pub/sub connection cleans its subscriptions with a command that
// waits on Redis without a deadline, and hands a possibly broken connection
// back to the pool.
func (s *redisSub) Close() {
	s.dc.Close()
	s.release()
}
