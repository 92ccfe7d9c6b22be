package main

import (
	"fmt"
	"sort"
	"strings"
)

// dropCounters are the node counters that say where a message was lost or
// delayed inside the node: a subscriber worker full (overflow), a socket's
// queue full (frames dropped, slow-consumer closes), the pub/sub
// connection cut (reconnects), and the sweeps and replays that recover
// kept messages. A step that lost messages is read against them.
var dropCounters = []string{
	"im_pubsub_overflow_total",
	"im_frames_dropped_total",
	"im_slow_consumer_closes_total",
	"im_redis_reconnects_total",
	"im_replayed_messages_total",
	`im_stream_sweeps_total{why="overflow"}`,
	`im_stream_sweeps_total{why="resubscribe"}`,
}

// nodeDrops sums dropCounters over every node; a node whose /metrics does
// not answer is left out.
func (e *env) nodeDrops() map[string]float64 {
	out := map[string]float64{}
	for _, n := range e.nodes {
		m, err := n.metrics()
		if err != nil {
			continue
		}
		for _, k := range dropCounters {
			out[k] += m[k]
		}
	}
	return out
}

// dropsNote names the counters that moved between before and after, or ""
// if none did.
func dropsNote(k int, before, after map[string]float64) string {
	var parts []string
	for name, v := range after {
		if d := v - before[name]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s +%.0f", name, d))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	sort.Strings(parts)
	return fmt.Sprintf("step %d node counters: %s", k, strings.Join(parts, ", "))
}
