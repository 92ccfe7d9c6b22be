//go:build measure

// A measurement, not part of CI (which never skips): build tag measure.

package store

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// TestClusterBroadcastCostMeasure compares what a broadcast costs a local
// 3+3 Redis Cluster as the store sends it (SPUBLISH on one sharded
// channel) against a plain PUBLISH, which a Cluster copies over its bus to
// every node: the CPU all six redis-server processes spent (INFO cpu,
// user+sys) and the Cluster bus messages they sent, per broadcast, with
// BCAST_NODES subscribers (default 6, spread over the masters as nodes
// would be) and BCAST_COUNT broadcasts of 200 bytes (default 20,000).
//
//	go test -tags measure -run TestClusterBroadcastCostMeasure -v ./internal/store/
func TestClusterBroadcastCostMeasure(t *testing.T) {
	cs := startClusterStore(t)
	ctx := context.Background()
	nodes := envN("BCAST_NODES", 6)
	count := envN("BCAST_COUNT", 20000)
	payload := []byte("{" + strings.Repeat("x", 198) + "}")

	// Sharded: the store's own subscriptions.
	var got atomic.Int64
	for i := range nodes {
		sub, err := cs.st.Subscribe(ctx, "n"+strconv.Itoa(i), func(m Message) {
			if m.Kind == ToBroadcast {
				got.Add(1)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
	}
	// Plain: SUBSCRIBE on a connection to each master in turn (a plain
	// channel can be heard on any node; rueidis connects to masters).
	var gotPlain atomic.Int64
	var addrs []string
	for _, s := range cs.c.Masters() {
		addrs = append(addrs, s.Addr)
	}
	for i := range nodes {
		nc := cs.rc.Nodes()[addrs[i%len(addrs)]]
		if nc == nil {
			t.Fatalf("no rueidis client for %s", addrs[i%len(addrs)])
		}
		dc, release := nc.Dedicate()
		defer release()
		defer dc.Close()
		dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: func(rueidis.PubSubMessage) { gotPlain.Add(1) }})
		if err := dc.Do(ctx, dc.B().Subscribe().Channel("plain-broadcast").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}

	run := func(name string, publish func() error, received *atomic.Int64) {
		cpu0, bus0 := cs.clusterCost(t)
		start := time.Now()
		for range count {
			if err := publish(); err != nil {
				t.Fatal(err)
			}
		}
		for received.Load() < int64(count*nodes) {
			if time.Since(start) > 2*time.Minute {
				t.Fatalf("%s: %d of %d deliveries", name, received.Load(), count*nodes)
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		cpu1, bus1 := cs.clusterCost(t)
		t.Logf("%s: %d broadcasts to %d subscribers in %v: redis CPU %.1f µs per broadcast (all 6 processes), cluster bus messages %.2f per broadcast",
			name, count, nodes, took.Round(time.Millisecond), (cpu1-cpu0)*1e6/float64(count), float64(bus1-bus0)/float64(count))
	}
	for round := range 2 { // alternate, twice each
		run("SPUBLISH (the store) #"+strconv.Itoa(round+1), func() error { return cs.st.PublishBroadcast(ctx, payload) }, &got)
		got.Store(0)
		run("PUBLISH #"+strconv.Itoa(round+1), func() error {
			return cs.rc.Do(ctx, cs.rc.B().Publish().Channel("plain-broadcast").Message(string(payload)).Build()).Error()
		}, &gotPlain)
		gotPlain.Store(0)
	}
}

func envN(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// clusterCost sums CPU seconds (user+sys) and cluster bus messages sent
// over every running server of the Cluster.
func (cs *clusterStore) clusterCost(t *testing.T) (cpu float64, bus int64) {
	t.Helper()
	for _, s := range cs.c.Servers {
		info, err := s.Exec("info", "cpu")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"used_cpu_sys:", "used_cpu_user:"} {
			cpu += infoFloat(info, f)
		}
		ci, err := s.Exec("cluster", "info")
		if err != nil {
			t.Fatal(err)
		}
		bus += int64(infoFloat(ci, "cluster_stats_messages_sent:"))
	}
	return cpu, bus
}

func infoFloat(info, key string) float64 {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
