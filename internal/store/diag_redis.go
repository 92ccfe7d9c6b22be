package store

import (
	"context"
	"fmt"
	"sort"
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
	ms, err := r.masters(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, m := range ms {
		if err := r.addCommandCalls(ctx, m.rc, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// MasterStat is one master's share of the work, for load tools that show
// how it spreads over a Cluster.
type MasterStat struct {
	Addr  string           // host:port as CLUSTER SLOTS names it; "" on a single Redis
	Slots int              // hash slots it serves (16384 on a single Redis)
	Calls map[string]int64 // INFO commandstats, inner commands of scripts included
	// Subscribers counts the connections holding a subscription there:
	// sharded ones (CLIENT LIST ssub>0) on a Cluster, SUBSCRIBE ones on a
	// single Redis.
	Subscribers int
}

// MasterStats reads every master's commandstats and subscriber
// connections, ordered by address.
func (r *Redis) MasterStats(ctx context.Context) ([]MasterStat, error) {
	ms, err := r.masters(ctx)
	if err != nil {
		return nil, err
	}
	field := "sub="
	if r.cluster {
		field = "ssub="
	}
	out := make([]MasterStat, len(ms))
	for i, m := range ms {
		out[i] = MasterStat{Addr: m.addr, Slots: m.slots, Calls: map[string]int64{}}
		if err := r.addCommandCalls(ctx, m.rc, out[i].Calls); err != nil {
			return nil, err
		}
		list, err := m.rc.Do(ctx, m.rc.B().ClientList().Build()).ToString()
		if err != nil {
			return nil, err
		}
		// The connections whose field (sub= or ssub=) is not 0.
		for _, line := range strings.Split(list, "\n") {
			for _, f := range strings.Fields(line) {
				if v, ok := strings.CutPrefix(f, field); ok && v != "0" {
					out[i].Subscribers++
				}
			}
		}
	}
	return out, nil
}

// master is one server that takes writes: the single Redis, or a Cluster
// master with the slots it serves.
type master struct {
	addr  string
	slots int
	rc    rueidis.Client
}

// masters lists the servers that take writes, ordered by address.
func (r *Redis) masters(ctx context.Context) ([]master, error) {
	if !r.cluster {
		return []master{{slots: clusterSlots, rc: r.rc}}, nil
	}
	sm, err := r.readSlotMap(ctx)
	if err != nil {
		return nil, err
	}
	slots := map[string]int{}
	for _, addr := range sm {
		slots[addr]++
	}
	addrs := make([]string, 0, len(slots))
	for a := range slots {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	nodes := r.rc.Nodes()
	out := make([]master, 0, len(addrs))
	for _, a := range addrs {
		n, ok := nodes[a]
		if !ok {
			return nil, fmt.Errorf("no connection to master %s", a)
		}
		out = append(out, master{addr: a, slots: slots[a], rc: n})
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
