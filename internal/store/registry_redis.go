package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// IssueToken implements Tokens.
func (r *Redis) IssueToken(ctx context.Context, client, token string, rec []byte, ttl time.Duration) error {
	return full(r.rc.Do(ctx, r.rc.B().Set().Key(r.k.token(client, token)).Value(rueidis.BinaryString(rec)).Px(ttl).Build()).Error())
}

// ConsumeToken implements Tokens with consume_token.lua.
func (r *Redis) ConsumeToken(ctx context.Context, client, token, node string) ([]byte, TokenStatus, error) {
	if r.cluster && client == "" {
		return nil, TokenMissing, nil // no slot to look in (a URL without &client=)
	}
	res, err := scriptReply(r.consumeToken.Exec(ctx, r.rc, []string{r.k.token(client, token)}, []string{node}))
	if err != nil {
		return nil, TokenMissing, err
	}
	switch code, _ := res[0].AsInt64(); code {
	case 1:
		if len(res) < 2 {
			return nil, TokenMissing, errEmptyReply
		}
		v, err := res[1].ToString()
		return []byte(v), TokenConsumed, err
	case 2:
		return nil, TokenForeign, nil
	default:
		return nil, TokenMissing, nil
	}
}

// WriteLease implements Registry with write_lease.lua.
func (r *Redis) WriteLease(ctx context.Context, info wire.NodeInfo, ttl time.Duration) (bool, error) {
	info.Expires = 0 // the script sets it from the server clock
	b, _ := json.Marshal(info)
	res, err := r.writeLease.exec(ctx, r.rc, []string{r.k.nodeKey(info.ID), r.k.nodeSet()},
		[]string{string(b), strconv.FormatInt(ttl.Milliseconds(), 10), info.ID})
	if err != nil {
		return false, err
	}
	renewed, err := res[0].AsInt64()
	return renewed == 1, err
}

// DeleteLease implements Registry.
func (r *Redis) DeleteLease(ctx context.Context, node string) error {
	return firstErr(r.rc.DoMulti(ctx,
		r.rc.B().Srem().Key(r.k.nodeSet()).Member(node).Build(),
		r.rc.B().Del().Key(r.k.nodeKey(node)).Build()))
}

// Nodes implements Registry. Leases are read one GET each in one round
// trip with the server's TIME, not with MGET, so that no command spans keys
// of several nodes.
//
// A node whose lease is live but that no connection subscribes for (PUBSUB
// NUMSUB of its channel is 0) is left out of live without being dead: it
// was killed and Redis saw its connections close at once, while its lease
// runs on for up to a TTL; or it is between two pub/sub connections and
// would not hear a message anyway. Routing around it at once is what lets
// its clients reconnect to a survivor within a view refresh instead of
// after the lease lapses; it is reaped only once the lease lapses.
func (r *Redis) Nodes(ctx context.Context) (live []wire.NodeInfo, dead []string, err error) {
	leases, err := r.leases(ctx)
	for _, l := range leases {
		switch {
		case !l.live:
			dead = append(dead, l.id)
		case !l.info.Draining && l.listening:
			live = append(live, l.info)
		}
	}
	return live, dead, err
}

// lease is one registry entry as read at now (the server's clock).
type lease struct {
	id        string
	info      wire.NodeInfo
	live      bool
	left      time.Duration // until it lapses; 0 for a lease written before "exp"
	listening bool          // a connection subscribes to the node's channel
}

// leases reads every registered node's lease, sorted by id.
func (r *Redis) leases(ctx context.Context) ([]lease, error) {
	ids, err := r.rc.Do(ctx, r.rc.B().Smembers().Key(r.k.nodeSet()).Build()).AsStrSlice()
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	slices.Sort(ids)
	if r.cluster {
		return r.clusterLeases(ctx, ids)
	}
	cmds := make(rueidis.Commands, 0, len(ids)+2)
	channels := make([]string, len(ids))
	for i, id := range ids {
		channels[i] = r.k.nodeChannel(id)
	}
	cmds = append(cmds, r.rc.B().Time().Build(), r.rc.B().PubsubNumsub().Channel(channels...).Build())
	for _, id := range ids {
		cmds = append(cmds, r.rc.B().Get().Key(r.k.nodeKey(id)).Build())
	}
	res := r.rc.DoMulti(ctx, cmds...)
	now, err := serverTime(res[0])
	if err != nil {
		return nil, err
	}
	// NUMSUB answers channel, count, channel, count... in the order asked.
	subs, err := res[1].ToArray()
	if err != nil || len(subs) != 2*len(ids) {
		return nil, fmt.Errorf("PUBSUB NUMSUB: %d replies for %d channels, %v", len(subs)/2, len(ids), err)
	}
	counts := make([]int64, len(ids))
	for i := range ids {
		counts[i], _ = subs[2*i+1].AsInt64()
	}
	vals := make([]rueidis.RedisMessage, len(ids))
	for i, res := range res[2:] {
		if vals[i], err = res.ToMessage(); err != nil && !rueidis.IsRedisNil(err) {
			return nil, err
		}
	}
	return parseLeases(ids, now, vals, counts)
}

// clusterLeases is leases on a Cluster: the leases and the clock in one
// script on the registry's slot (read_leases.lua), and each node channel's
// subscriber count from its own master (PUBSUB SHARDNUMSUB: sharded
// channels are counted there, and one command may name one slot only), in
// one round trip.
func (r *Redis) clusterLeases(ctx context.Context, ids []string) ([]lease, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.k.nodeKey(id)
	}
	cmds := make(rueidis.Commands, 0, len(ids)+1)
	cmds = append(cmds, r.readLeases.evalsha(r.rc, keys, nil))
	for _, id := range ids {
		cmds = append(cmds, r.rc.B().PubsubShardnumsub().Channel(r.k.nodeChannel(id)).Build())
	}
	res := r.rc.DoMulti(ctx, cmds...)
	if isNoScript(res[0]) { // a new or flushed master: load it
		res[0] = r.readLeases.Exec(ctx, r.rc, keys, nil)
	}
	arr, err := res[0].ToArray()
	if err == nil && len(arr) != len(ids)+2 {
		err = fmt.Errorf("read_leases.lua: %d values for %d nodes", len(arr)-2, len(ids))
	}
	if err != nil {
		return nil, err
	}
	sec, err1 := arr[0].AsInt64()
	usec, err2 := arr[1].AsInt64()
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("read_leases.lua: malformed time: %w", err)
	}
	counts := make([]int64, len(ids))
	for i := range ids {
		// SHARDNUMSUB answers channel, count.
		sub, err := res[1+i].ToArray()
		if err != nil || len(sub) != 2 {
			return nil, fmt.Errorf("PUBSUB SHARDNUMSUB %s: %v", ids[i], err)
		}
		counts[i], _ = sub[1].AsInt64()
	}
	return parseLeases(ids, time.Unix(sec, usec*1000), arr[2:], counts)
}

// parseLeases builds the leases of ids from their values (nil messages
// where there is none), the server's time and their channels' subscriber
// counts.
func parseLeases(ids []string, now time.Time, vals []rueidis.RedisMessage, counts []int64) ([]lease, error) {
	out := make([]lease, 0, len(ids))
	for i, id := range ids {
		str, err := vals[i].ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return nil, err
		}
		l := lease{id: id}
		// A missing key, or one that is not a lease this node wrote, is dead.
		if err == nil && json.Unmarshal([]byte(str), &l.info) == nil && l.info.ID == id {
			switch {
			case l.info.Expires == 0: // written before "exp": lapses by key TTL
				l.live = true
			case l.info.Expires >= now.UnixMilli():
				l.live, l.left = true, time.UnixMilli(l.info.Expires).Sub(now)
			}
		}
		l.listening = counts[i] > 0
		out = append(out, l)
	}
	return out, nil
}

// serverTime parses a TIME reply.
func serverTime(res rueidis.RedisResult) (time.Time, error) {
	parts, err := res.AsIntSlice()
	if err == nil && len(parts) != 2 {
		err = errors.New("malformed TIME reply")
	}
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(parts[0], parts[1]*1000), nil
}

// ClaimReap implements Registry.
func (r *Redis) ClaimReap(ctx context.Context, node, by string, ttl time.Duration) (bool, error) {
	err := r.rc.Do(ctx, r.rc.B().Set().Key(r.k.reapLock(node)).Value(by).Nx().Px(ttl).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return false, nil // held by another survivor
	}
	return err == nil, err
}

// ReleaseReap implements Registry.
func (r *Redis) ReleaseReap(ctx context.Context, node string) error {
	return r.rc.Do(ctx, r.rc.B().Del().Key(r.k.reapLock(node)).Build()).Error()
}

// FinishReap implements Registry with reap_done.lua.
func (r *Redis) FinishReap(ctx context.Context, node string) (bool, error) {
	keys := []string{r.k.nodeKey(node), r.k.nodeSet(), r.k.reapLock(node)}
	if !r.cluster {
		keys = append(keys, r.k.nodeClients(node))
	}
	n, err := r.reapDone.Exec(ctx, r.rc, keys, []string{node}).AsInt64()
	if err == nil && n == 1 && r.cluster {
		// The node's set is in its own slot: deleted once the node is
		// gone, so that a reap cut short before this still finds it.
		err = r.rc.Do(ctx, r.rc.B().Del().Key(r.k.nodeClients(node)).Build()).Error()
	}
	return n == 1, err
}
