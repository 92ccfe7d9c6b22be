package store

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/redis/rueidis"
)

// PublishNodes implements Publisher.
func (r *Redis) PublishNodes(ctx context.Context, msgs ...NodeMessage) error {
	if len(msgs) == 1 {
		return r.doPublish(ctx, r.publish(r.k.nodeChannel(msgs[0].Node), msgs[0].Msg))
	}
	cmds := make(rueidis.Commands, len(msgs))
	for i, m := range msgs {
		cmds[i] = r.publish(r.k.nodeChannel(m.Node), m.Msg)
	}
	var first error
	give := time.Now().Add(undialledRetryFor) // one budget for the whole call
	for i, res := range r.rc.DoMulti(ctx, cmds...) {
		err := res.Error()
		if r.cluster && isDialError(err) { // never sent: see doPublish
			err = r.retryPublish(ctx, cmds[i], err, give)
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// PublishChannel implements Publisher.
func (r *Redis) PublishChannel(ctx context.Context, ch string, frame []byte) error {
	return r.doPublish(ctx, r.publish(r.k.topicChannel(ch), frame))
}

// doPublish runs one publish. On a Cluster, right after a failover rueidis
// may still route a slot to the dead master until its next slot map
// refresh, which the failed dial itself triggers: a publish that could not
// even connect was never sent, so it is tried again (within ctx, for at
// most twice DialTimeout) instead of failing a send that the new master
// would take. Any other error is returned as is: a PUBLISH that may have
// reached Redis is never repeated.
func (r *Redis) doPublish(ctx context.Context, cmd rueidis.Completed) error {
	err := r.rc.Do(ctx, cmd).Error()
	if !r.cluster {
		return err
	}
	return r.retryPublish(ctx, cmd, err, time.Now().Add(undialledRetryFor))
}

// undialledRetryFor bounds how long a command that could not dial its
// master is tried again on a Cluster (publishes, kept sends, history
// reads); a failover's refresh took 0.7-0.8 s in tests.
const undialledRetryFor = 2 * DialTimeout

// retryPublish sends cmd again while err is a dial error, until give or
// ctx ends.
func (r *Redis) retryPublish(ctx context.Context, cmd rueidis.Completed, err error, give time.Time) error {
	return whileUndialled(ctx, err, give, func() error { return r.rc.Do(ctx, cmd).Error() })
}

// whileUndialled runs again, with growing pauses, while err is a dial
// error (nothing was sent), until give or ctx ends.
func whileUndialled(ctx context.Context, err error, give time.Time, again func() error) error {
	for wait := 20 * time.Millisecond; isDialError(err) && time.Now().Before(give); wait = min(2*wait, 320*time.Millisecond) {
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		err = again()
	}
	return err
}

// isDialError reports an error from connecting, before anything was sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// PublishBroadcast implements Publisher. On a Cluster the broadcast channel
// is one sharded channel: its master pushes each broadcast once to every
// node (one subscriber connection each), where a plain PUBLISH would also
// be copied over the Cluster bus to every other Redis node.
func (r *Redis) PublishBroadcast(ctx context.Context, frame []byte) error {
	return r.doPublish(ctx, r.publish(r.k.broadcastChannel(), frame))
}

// publishVerb is the publish command: SPUBLISH on a Cluster, where every
// channel is a sharded one (pubsub_cluster.go), else PUBLISH.
func (r *Redis) publishVerb() string {
	if r.cluster {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// publish is PUBLISH, or SPUBLISH on a Cluster (pubsub_cluster.go).
func (r *Redis) publish(channel string, msg []byte) rueidis.Completed {
	if r.cluster { // pinned: doPublish may send it again
		return r.rc.B().Spublish().Channel(channel).Message(rueidis.BinaryString(msg)).Build().Pin()
	}
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
	route := r.router(node, onMessage)
	if r.cluster {
		return r.subscribeCluster(ctx, node, route)
	}
	dc, release := r.rc.Dedicate()
	wait := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: route})
	s := &redisSub{r: r, node: node, dc: dc, release: release, wait: wait}
	if err := s.subscribe(ctx, []string{r.k.nodeChannel(node), r.k.broadcastChannel()}); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// router turns what a node's subscription receives into Messages for
// onMessage, by the channel it came on.
func (r *Redis) router(node string, onMessage func(Message)) func(rueidis.PubSubMessage) {
	nodeCh, bcast := r.k.nodeChannel(node), r.k.broadcastChannel()
	return func(m rueidis.PubSubMessage) {
		switch {
		case m.Channel == nodeCh:
			onMessage(Message{Kind: ToNode, Payload: m.Message})
		case m.Channel == bcast:
			onMessage(Message{Kind: ToBroadcast, Payload: m.Message})
		default:
			if ch, ok := r.k.topicName(m.Channel); ok {
				onMessage(Message{Kind: ToChannel, Channel: ch, Payload: m.Message})
			}
		}
	}
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
	return s.subscribe(ctx, s.r.k.topicChannels(chans))
}

// Untopic implements Subscription.
func (s *redisSub) Untopic(ctx context.Context, ch string) error {
	return s.dc.Do(ctx, s.dc.B().Unsubscribe().Channel(s.r.k.topicChannel(ch)).Build()).Error()
}

// Probe implements Subscription: on a single Redis the node's own probe on
// its node channel covers the one connection.
func (s *redisSub) Probe(context.Context) error { return nil }

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
