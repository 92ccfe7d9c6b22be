package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// MemoryState is what Redis says about its memory limit: the two things a
// node checks so that Redis running out of memory never loses broker state
// silently.
type MemoryState struct {
	Policy string // maxmemory-policy, e.g. "noeviction"
	Used   int64  // used_memory in bytes
	Max    int64  // maxmemory in bytes; 0 means no limit
	// WritesRefused: a small write (the probe) failed with OOM. used_memory
	// alone cannot tell: Redis counts the incoming command too, so it
	// refuses a large write while used_memory is still under the limit.
	WritesRefused bool
}

// EvictsBrokerKeys reports a memory limit whose policy may evict keys
// without a TTL: presence, channel membership and the event stream. The
// volatile-* policies evict only keys with a TTL, which the broker uses
// only for connect tokens and reap claims (losing one costs a retry, not
// state). Without a limit nothing is ever evicted.
func (m MemoryState) EvictsBrokerKeys() bool {
	return m.Max > 0 && strings.HasPrefix(m.Policy, "allkeys-")
}

// Full reports that Redis is at its memory limit: under noeviction (or a
// volatile-* policy with nothing left to evict) every write that may grow
// memory fails with OOM.
func (m MemoryState) Full() bool { return m.WritesRefused }

// Memory reads MemoryState from INFO memory, which managed Redis offerings
// allow where they rename CONFIG, and probes with a small write of node's
// probe key (with a TTL, so it goes by itself).
func (r *Redis) Memory(ctx context.Context, node string) (MemoryState, error) {
	res := r.rc.DoMulti(ctx,
		r.rc.B().Info().Section("memory").Build(),
		r.rc.B().Set().Key(r.k.memoryProbe(node)).Value("1").Px(time.Minute).Build())
	s, err := res[0].ToString()
	if err != nil {
		return MemoryState{}, err
	}
	m, err := parseMemoryInfo(s)
	if err != nil {
		return MemoryState{}, err
	}
	if err := res[1].Error(); err != nil {
		if !errors.Is(full(err), ErrRedisFull) {
			return MemoryState{}, err
		}
		m.WritesRefused = true
	}
	return m, nil
}

func parseMemoryInfo(info string) (MemoryState, error) {
	var m MemoryState
	seen := 0
	for _, line := range strings.Split(info, "\n") {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		var err error
		switch name {
		case "maxmemory_policy":
			m.Policy, seen = val, seen+1
		case "used_memory":
			m.Used, err = strconv.ParseInt(val, 10, 64)
			seen++
		case "maxmemory":
			m.Max, err = strconv.ParseInt(val, 10, 64)
			seen++
		}
		if err != nil {
			return MemoryState{}, fmt.Errorf("INFO memory: %s: %w", name, err)
		}
	}
	if seen != 3 {
		return MemoryState{}, errors.New("INFO memory lacks maxmemory_policy, used_memory or maxmemory")
	}
	return m, nil
}

// ErrRedisFull reports a write Redis refused because it is at maxmemory
// (an OOM error): nothing was written.
var ErrRedisFull = errors.New("redis is at maxmemory and refuses writes")

// full turns Redis' OOM error into one that wraps ErrRedisFull, keeping
// Redis' message; other errors pass unchanged.
func full(err error) error {
	if re, ok := rueidis.IsRedisErr(err); ok && (strings.HasPrefix(re.Error(), "OOM") || strings.Contains(re.Error(), "OOM command not allowed")) {
		return fmt.Errorf("%w: %s", ErrRedisFull, re.Error())
	}
	return err
}
