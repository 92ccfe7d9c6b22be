package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// Diagnostics are read-only looks at Redis for load tools and tests: what
// it counted, who listens. They are not on any delivery path.

// CommandCalls returns Redis' call count per command (lower case, e.g.
// "publish", "evalsha"), from INFO commandstats.
// On a Cluster the counts are summed over the masters (a replica's would
// count every replicated write again).
func (r *Redis) CommandCalls(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	if !r.cluster {
		return out, r.addCommandCalls(ctx, r.rc, out)
	}
	m, err := r.readSlotMap(ctx)
	if err != nil {
		return nil, err
	}
	nodes := r.rc.Nodes()
	seen := map[string]bool{}
	for _, addr := range m {
		if seen[addr] {
			continue
		}
		seen[addr] = true
		n, ok := nodes[addr]
		if !ok {
			return nil, fmt.Errorf("no connection to master %s", addr)
		}
		if err := r.addCommandCalls(ctx, n, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// addCommandCalls adds one server's INFO commandstats to out.
func (r *Redis) addCommandCalls(ctx context.Context, rc rueidis.Client, out map[string]int64) error {
	s, err := rc.Do(ctx, rc.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return err
	}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, _ := strconv.ParseInt(calls, 10, 64)
		out[strings.TrimPrefix(name, "cmdstat_")] += n
	}
	return nil
}

// ChannelSubscribers returns how many connections subscribe to channel
// ch's topic.
func (r *Redis) ChannelSubscribers(ctx context.Context, ch string) (int64, error) {
	return r.subscribers(ctx, r.k.topicChannel(ch))
}

// EventSubscribers returns how many connections subscribe to the event
// channel (imhelper's EventBus).
func (r *Redis) EventSubscribers(ctx context.Context) (int64, error) {
	return r.subscribers(ctx, r.k.eventChannel())
}

// EventStreamLen returns the number of entries in the event stream.
func (r *Redis) EventStreamLen(ctx context.Context) (int64, error) {
	return r.rc.Do(ctx, r.rc.B().Xlen().Key(r.k.eventStream()).Build()).AsInt64()
}

// EventGroups returns the names of the event stream's consumer groups.
func (r *Redis) EventGroups(ctx context.Context) ([]string, error) {
	groups, err := r.rc.Do(ctx, r.rc.B().XinfoGroups().Key(r.k.eventStream()).Build()).ToArray()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, g := range groups {
		m, err := g.AsMap()
		if err != nil {
			return nil, err
		}
		v := m["name"]
		name, err := v.ToString()
		if err != nil {
			return nil, err
		}
		out = append(out, name)
	}
	return out, nil
}

// subscribers is PUBSUB NUMSUB of one channel, or SHARDNUMSUB on a
// Cluster (where rueidis sends it to the channel's master).
func (r *Redis) subscribers(ctx context.Context, channel string) (int64, error) {
	cmd := r.rc.B().PubsubNumsub().Channel(channel).Build()
	if r.cluster {
		cmd = r.rc.B().PubsubShardnumsub().Channel(channel).Build()
	}
	res, err := r.rc.Do(ctx, cmd).ToArray()
	if err != nil || len(res) != 2 {
		return 0, err
	}
	return res[1].AsInt64()
}
