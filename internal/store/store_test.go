package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

// Every redis.call in every script names its key as KEYS[n]: no key is
// built from ARGV or from data the script read, which a Redis Cluster
// cannot route. PUBLISH names a channel, not a key. lease.lua's and
// token.lua's helpers take their key as a parameter, and history.lua's
// helpers their stream and meta: every call of them must pass KEYS[n].
func TestScriptsDeclareEveryKey(t *testing.T) {
	files, err := filepath.Glob("lua/*.lua")
	cluster, _ := filepath.Glob("lua/cluster/*.lua")
	if files = append(files, cluster...); err != nil || len(files) == 0 || len(cluster) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	call := regexp.MustCompile(`(redis\.call\('\w+'|lease_live|epoch_of|append|take_token|mark_online|queue_event)[,(]\s*([^,)]+)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		calls := call.FindAllStringSubmatch(string(b), -1)
		if len(calls) == 0 && f != "lua/event_json.lua" { // event_json.lua only builds JSON
			t.Errorf("%s: no redis.call found", f)
		}
		for _, m := range calls {
			helperParam := (filepath.Base(f) == "lease.lua" || filepath.Base(f) == "token.lua") && m[2] == "key" ||
				filepath.Base(f) == "history.lua" && (m[2] == "stream" || m[2] == "meta") ||
				f == "lua/cluster/presence.lua" && slices.Contains([]string{"bucket", "nodes", "chans", "pending", "counter"}, m[2])
			if m[1] == "redis.call('PUBLISH'" || m[1] == "redis.call('SPUBLISH'" || helperParam {
				continue
			}
			if !regexp.MustCompile(`^KEYS\[[^\]]+\]$`).MatchString(strings.TrimSpace(m[2])) {
				t.Errorf("%s: %s on %q, not on a declared key", f, m[1], m[2])
			}
		}
	}
}

// newTestStore is a store on a private redis-server, or on the shared
// Cluster for a test run by TestStoreOnRedisCluster.
func newTestStore(t *testing.T) *Redis {
	t.Helper()
	if v, ok := clusterTests.Load(t); ok {
		return storeOnCluster(t, v.(*redistest.Cluster))
	}
	return storeAt(t, redistest.Start(t))
}

// A client with sockets on two nodes stays online when one node lets go of
// it, and goes offline, leaving every channel, when the other does too,
// even when the caller's belief of its channels is empty or stale.
func TestPresenceAcrossNodes(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	ev := wire.Event{Type: wire.EventOnline, Client: "c1"}
	if _, err := st.Join(ctx, "c1", []string{"r1", "r2"}); err != nil {
		t.Fatal(err)
	}
	if existed, chans, err := st.MarkOnline(ctx, "c1", "n1", ev); err != nil || existed || len(chans) != 2 {
		t.Fatalf("first online: %v %v %v", existed, chans, err)
	}
	if existed, _, err := st.MarkOnline(ctx, "c1", "n2", ev); err != nil || !existed {
		t.Fatalf("second node: existed=%v %v", existed, err)
	}
	off := wire.Event{Type: wire.EventOffline, Client: "c1"}
	// n2 is named in im:online; its sockets close, the client lives on n1.
	if res, err := st.MarkOffline(ctx, OfflineRequest{Client: "c1", Node: "n2", Offline: off}); err != nil || res != LivesElsewhere {
		t.Fatalf("offline on n2: %v %v", res, err)
	}
	if node, _ := st.ClientNode(ctx, "c1"); node != "n1" {
		t.Fatalf("presence not handed to n1: %q", node)
	}
	// A JoinChan the node has not heard of yet: the hint lacks r3.
	if _, err := st.Join(ctx, "c1", []string{"r3"}); err != nil {
		t.Fatal(err)
	}
	if res, err := st.MarkOffline(ctx, OfflineRequest{Client: "c1", Node: "n1", Offline: off, Joined: []string{"r1"}}); err != nil || res != WentOffline {
		t.Fatalf("offline on n1: %v %v", res, err)
	}
	for _, ch := range []string{"r1", "r2", "r3"} {
		if m, _ := st.ChanMembers(ctx, ch); len(m) != 0 {
			t.Errorf("%s still lists %v", ch, m)
		}
	}
	if chans, _ := st.Chans(ctx); len(chans) != 0 {
		t.Errorf("channel index still lists %v", chans)
	}
	if on, _ := st.AreOnline(ctx, []string{"c1"}); on[0] {
		t.Error("c1 still online")
	}
}

// A reap stops as soon as the dead node holds a lease again.
func TestReapRefusedWhenNodeIsBack(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	if _, _, err := st.MarkOnline(ctx, "c1", "n1", wire.Event{Type: wire.EventOnline}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: "n1", URL: "ws://x/ws"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	res, err := st.MarkOffline(ctx, OfflineRequest{Client: "c1", Node: "n1", Reaping: true})
	if err != nil || res != NodeIsBack {
		t.Fatalf("reap of a live node: %v %v", res, err)
	}
	// Nobody subscribes for n1 yet: routed around, but not dead.
	live, dead, err := st.Nodes(ctx)
	if err != nil || len(live) != 0 || len(dead) != 0 {
		t.Fatalf("nodes before n1 subscribes: %v %v %v", live, dead, err)
	}
	sub, err := st.Subscribe(ctx, "n1", func(Message) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	live, dead, err = st.Nodes(ctx)
	if err != nil || len(live) != 1 || len(dead) != 0 {
		t.Fatalf("nodes: %v %v %v", live, dead, err)
	}
	if removed, err := st.FinishReap(ctx, "n1"); err != nil || removed {
		t.Fatalf("FinishReap of a live node: %v %v", removed, err)
	}
	if err := st.DeleteLease(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	ids, _, err := st.NodeClients(ctx, "n1", 0)
	if err != nil || !slices.Equal(ids, []string{"c1"}) {
		t.Fatalf("node clients: %v %v", ids, err)
	}
}

// Memory reads the limit and policy; Full and EvictsBrokerKeys follow them.
func TestMemory(t *testing.T) {
	rs := redistest.StartWith(t, "--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru")
	rc, err := Dial(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	st := NewRedis(rc, Options{})
	m, err := st.Memory(context.Background(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	if m.Policy != "allkeys-lru" || m.Max != 8<<20 || m.Used <= 0 || m.Full() || !m.EvictsBrokerKeys() {
		t.Fatalf("%+v full=%v evicts=%v", m, m.Full(), m.EvictsBrokerKeys())
	}
}

// A lease lapses by its "exp" on the server clock, although its key has no
// TTL (which volatile-* eviction could take); a lease from before "exp"
// lapses by its key TTL and is live while the key exists.
func TestLeaseExpiry(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: "n1", URL: "ws://x/ws"}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ttl, _ := st.rc.Do(ctx, st.rc.B().Pttl().Key("im:node:n1").Build()).AsInt64(); ttl != -1 {
		t.Fatalf("lease key has a TTL (%d)", ttl)
	}
	legacy := `{"id":"n0","url":"ws://old/ws","started":1}`
	if err := st.rc.Do(ctx, st.rc.B().Set().Key("im:node:n0").Value(legacy).Px(time.Minute).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := st.rc.Do(ctx, st.rc.B().Sadd().Key("im:nodes").Member("n0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitForLapse := func() error {
		leases, err := st.leases(ctx)
		if err != nil {
			return err
		}
		if len(leases) != 2 || !leases[0].live || leases[1].live {
			return fmt.Errorf("leases %+v, want n0 live and n1 lapsed", leases)
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := waitForLapse(); err != nil; err = waitForLapse() {
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if renewed, err := st.WriteLease(ctx, wire.NodeInfo{ID: "n1"}, time.Minute); err != nil || renewed {
		t.Fatalf("rewriting a lapsed lease: renewed=%v %v", renewed, err)
	}
	if renewed, err := st.WriteLease(ctx, wire.NodeInfo{ID: "n1"}, time.Minute); err != nil || !renewed {
		t.Fatalf("refreshing a live lease: renewed=%v %v", renewed, err)
	}
}
