package store

import (
	"context"
	"strconv"
	"strings"
)

// Diagnostics are read-only looks at Redis for load tools and tests: what
// it counted, who listens. They are not on any delivery path.

// CommandCalls returns Redis' call count per command (lower case, e.g.
// "publish", "evalsha"), from INFO commandstats.
func (r *Redis) CommandCalls(ctx context.Context) (map[string]int64, error) {
	s, err := r.rc.Do(ctx, r.rc.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, _ := strconv.ParseInt(calls, 10, 64)
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out, nil
}

// ChannelSubscribers returns how many connections subscribe to channel
// ch's topic.
func (r *Redis) ChannelSubscribers(ctx context.Context, ch string) (int64, error) {
	res, err := r.rc.Do(ctx, r.rc.B().PubsubNumsub().Channel(r.k.topicChannel(ch)).Build()).ToArray()
	if err != nil || len(res) != 2 {
		return 0, err
	}
	return res[1].AsInt64()
}
