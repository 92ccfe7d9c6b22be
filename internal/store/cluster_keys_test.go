package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

var (
	clusterTests  sync.Map // *testing.T → *redistest.Cluster, while it runs
	clusterPrefix atomic.Int64
)

// storeOnCluster is a store on the Cluster rc under a key prefix of its own.
func storeOnCluster(t *testing.T, rc *redistest.Cluster) *Redis {
	t.Helper()
	c, err := Dial(rc.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	st, err := Open(c, Options{Prefix: fmt.Sprintf("t%d:", clusterPrefix.Add(1))})
	if err != nil {
		t.Fatal(err)
	}
	if !st.cluster {
		t.Fatal("not a Cluster client")
	}
	return st
}

// The store's tests run again on a real Redis Cluster, which refuses any
// command or script that spans slots (CROSSSLOT): the same assertions
// prove the split steps do what the single-server scripts do. Then the
// Cluster's own cases: steps cut short, presence spread over buckets.
func TestStoreOnRedisCluster(t *testing.T) {
	rc := redistest.StartCluster(t)
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"PresenceAcrossNodes", TestPresenceAcrossNodes},
		{"ReapRefusedWhenNodeIsBack", TestReapRefusedWhenNodeIsBack},
		{"Connect", TestConnect},
		{"ConnectEventBytes", TestConnectEventBytes},
		{"PublishKept", TestPublishKept},
		{"PublishKeptBatches", TestPublishKeptBatches},
		{"ChannelKeptAndEpoch", TestChannelKeptAndEpoch},
		{"OfflineCutShortIsFinished", testOfflineCutShort},
		{"ConnectCutShortIsFinished", testConnectCutShort},
		{"EventsEmittedOnceInOrder", testEventsEmittedOnce},
		{"PresenceOverBuckets", testPresenceOverBuckets},
		{"ChannelIndex", testChannelIndex},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clusterTests.Store(t, rc)
			t.Cleanup(func() { clusterTests.Delete(t) })
			tc.test(t)
		})
	}
	t.Run("PrefixWithHashTagRefused", func(t *testing.T) {
		c, err := Dial(rc.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, p := range []string{"{im}:", "im}:", "a{b:"} {
			if _, err := Open(c, Options{Prefix: p}); !errors.Is(err, ErrPrefixTag) {
				t.Errorf("prefix %q: %v, want ErrPrefixTag", p, err)
			}
		}
	})
}

// cutOffline runs only the first step of a Cluster offline, as a node that
// died right after it would have.
func cutOffline(t *testing.T, st *Redis, client, node string, ev wire.Event) {
	t.Helper()
	keys := append(st.clientKeys(client)[:3:3], st.k.clientLeaving(client), st.k.pendingEvents(client), st.k.eventCounter(client))
	if err := st.cl.offline.Exec(context.Background(), st.rc, keys, []string{client, node, string(ev.Encode())}).Error(); err != nil {
		t.Fatal(err)
	}
}

func pendingLen(t *testing.T, st *Redis, client string) int64 {
	t.Helper()
	n, err := st.rc.Do(context.Background(), st.rc.B().Llen().Key(st.k.pendingEvents(client)).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An offline cut short after its client step (the node died) leaves the
// client in the node's set, its channels in its leaving set and the event
// pending; the reaper's offline finishes it: the channels are left, the
// one offline event is emitted once, and the node's set is empty.
func testOfflineCutShort(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	if _, err := st.Join(ctx, "c1", []string{"r1", "r2"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.MarkOnline(ctx, "c1", "n1", wire.Event{Type: wire.EventOnline, Client: "c1"}); err != nil {
		t.Fatal(err)
	}
	closed := wire.Event{Type: wire.EventOffline, Client: "c1", Reason: wire.ReasonClosed}
	cutOffline(t, st, "c1", "n1", closed)
	if on, _ := st.AreOnline(ctx, []string{"c1"}); on[0] {
		t.Fatal("c1 online after its client step")
	}
	if m, _ := st.ChanMembers(ctx, "r1"); !slices.Equal(m, []string{"c1"}) {
		t.Fatalf("r1 lists %v before the channel step", m)
	}
	if ids, _, _ := st.NodeClients(ctx, "n1", 0); !slices.Equal(ids, []string{"c1"}) {
		t.Fatalf("node set %v: the reaper would not find c1", ids)
	}
	lost := wire.Event{Type: wire.EventOffline, Client: "c1", Reason: wire.ReasonNodeLost}
	res, err := st.MarkOffline(ctx, OfflineRequest{Client: "c1", Node: "n1", Offline: lost, Reaping: true})
	if err != nil || res != WentOffline {
		t.Fatalf("reap: %v %v", res, err)
	}
	for _, ch := range []string{"r1", "r2"} {
		if m, _ := st.ChanMembers(ctx, ch); len(m) != 0 {
			t.Errorf("%s still lists %v", ch, m)
		}
	}
	if chans, _ := st.Chans(ctx); len(chans) != 0 {
		t.Errorf("channel index %v", chans)
	}
	if ids, _, _ := st.NodeClients(ctx, "n1", 0); len(ids) != 0 {
		t.Errorf("node set %v after the reap", ids)
	}
	if n := pendingLen(t, st, "c1"); n != 0 {
		t.Errorf("%d events still pending", n)
	}
	want := []string{string(wire.Event{Type: wire.EventOnline, Client: "c1"}.Encode()), string(closed.Encode())}
	if got := eventPayloads(t, st); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q (the cut offline's own event, once)", got, want)
	}
}

// A connect cut short before its event step leaves the online event
// pending; the reaper emits it before the offline, in that order.
func testConnectCutShort(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	online := wire.Event{Type: wire.EventOnline, Client: "c2", Node: "n1"}
	if _, err := st.addNodeClient(ctx, "n1", "c2"); err != nil {
		t.Fatal(err)
	}
	if err := st.cl.online.Exec(ctx, st.rc, st.clientKeys("c2"), []string{"c2", "n1", string(online.Encode())}).Error(); err != nil {
		t.Fatal(err)
	}
	if n := len(eventPayloads(t, st)); n != 0 {
		t.Fatalf("%d events before the event step", n)
	}
	lost := wire.Event{Type: wire.EventOffline, Client: "c2", Node: "n1", Reason: wire.ReasonNodeLost}
	if res, err := st.MarkOffline(ctx, OfflineRequest{Client: "c2", Node: "n1", Offline: lost, Reaping: true}); err != nil || res != WentOffline {
		t.Fatalf("reap: %v %v", res, err)
	}
	want := []string{string(online.Encode()), string(lost.Encode())}
	if got := eventPayloads(t, st); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if n := pendingLen(t, st, "c2"); n != 0 {
		t.Errorf("%d events still pending", n)
	}
}

// Several parties may emit one client's pending events (its old node, the
// node it moved to, a reaper), each with the list it read: every event is
// appended once, in the order the client's slot numbered them, however
// their event steps interleave.
func testEventsEmittedOnce(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	online := wire.Event{Type: wire.EventOnline, Client: "c3", Node: "n1"}
	offline := wire.Event{Type: wire.EventOffline, Client: "c3", Node: "n1", Reason: wire.ReasonClosed}
	again := wire.Event{Type: wire.EventOnline, Client: "c3", Node: "n2"}
	// run runs a client step and returns the pending list it read.
	run := func(script *rueidis.Lua, keys []string, args ...string) []string {
		t.Helper()
		arr, err := scriptReply(script.Exec(ctx, st.rc, keys, args))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := arr[1].AsInt64()
		return strs(arr[2+n:])
	}
	a := run(st.cl.online, st.clientKeys("c3"), "c3", "n1", string(online.Encode()))
	offKeys := append(st.clientKeys("c3")[:3:3], st.k.clientLeaving("c3"), st.k.pendingEvents("c3"), st.k.eventCounter("c3"))
	b := run(st.cl.offline, offKeys, "c3", "n1", string(offline.Encode()))
	c := run(st.cl.online, st.clientKeys("c3"), "c3", "n2", string(again.Encode()))
	if len(a) != 1 || len(b) != 2 || len(c) != 3 {
		t.Fatalf("pending lists %q %q %q", a, b, c)
	}
	// The last party emits first, then the earlier ones with their
	// shorter lists, then the first again.
	for _, list := range [][]string{c, b, a, c} {
		if err := st.emit(ctx, "c3", list); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{string(online.Encode()), string(offline.Encode()), string(again.Encode())}
	if got := eventPayloads(t, st); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	// Interleaved the other way: the first party's list before the last's.
	st2 := newTestStore(t)
	a = run(st2.cl.online, st2.clientKeys("c3"), "c3", "n1", string(online.Encode()))
	b = run(st2.cl.offline, append(st2.clientKeys("c3")[:3:3], st2.k.clientLeaving("c3"), st2.k.pendingEvents("c3"), st2.k.eventCounter("c3")),
		"c3", "n1", string(offline.Encode()))
	for _, list := range [][]string{a, b, a, b} {
		if err := st2.emit(ctx, "c3", list); err != nil {
			t.Fatal(err)
		}
	}
	if got := eventPayloads(t, st2); !slices.Equal(got, want[:2]) {
		t.Fatalf("events %q, want %q", got, want[:2])
	}
}

// Presence is spread over the buckets, and every read of it sees all of
// them: the count, the paged list, the batch check and channel counts.
func testPresenceOverBuckets(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	const n = 1500
	want := make([]string, n)
	buckets := map[int]bool{}
	for i := range want {
		id := fmt.Sprintf("p-%d", i)
		want[i] = id
		buckets[bucketOf(id)] = true
		if _, _, err := st.MarkOnline(ctx, id, "n1", wire.Event{Type: wire.EventOnline, Client: id}); err != nil {
			t.Fatal(err)
		}
	}
	if len(buckets) < presenceBuckets/2 {
		t.Fatalf("%d clients fell into only %d buckets", n, len(buckets))
	}
	if k, err := st.OnlineCount(ctx); err != nil || k != n {
		t.Fatalf("OnlineCount %d %v", k, err)
	}
	var got []string
	pages := 0
	for cursor := uint64(0); ; pages++ {
		ids, next, err := st.OnlineClients(ctx, cursor)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ids...)
		if cursor = next; cursor == 0 {
			break
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("OnlineClients listed %d of %d clients (%d pages)", len(got), n, pages+1)
	}
	on, err := st.AreOnline(ctx, []string{"p-1", "nobody", "p-1499", "p-77", "p-1500"})
	if err != nil || !slices.Equal(on, []bool{true, false, true, true, false}) {
		t.Fatalf("AreOnline %v %v", on, err)
	}
	for _, id := range []string{"p-3", "p-4", "nobody"} {
		if _, err := st.Join(ctx, id, []string{"hall"}); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := st.ChanOnline(ctx, []string{"hall", "empty"}); err != nil || !slices.Equal(k, []int{2, 0}) {
		t.Fatalf("ChanOnline %v %v", k, err)
	}
}

// The index of channels lists a channel while it has members, across
// joins and leaves of several clients.
func testChannelIndex(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if _, err := st.Join(ctx, id, []string{"r1", "r2"}); err != nil {
			t.Fatal(err)
		}
	}
	index := func() []string {
		chans, err := st.Chans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(chans)
		return chans
	}
	if _, err := st.Leave(ctx, "a", []string{"r1", "r2"}); err != nil {
		t.Fatal(err)
	}
	if got := index(); !slices.Equal(got, []string{"r1", "r2"}) {
		t.Fatalf("index %v while b is a member", got)
	}
	if _, err := st.Leave(ctx, "b", []string{"r1"}); err != nil {
		t.Fatal(err)
	}
	if got := index(); !slices.Equal(got, []string{"r2"}) {
		t.Fatalf("index %v", got)
	}
	if chans, _ := st.ClientChans(ctx, "b"); !slices.Equal(chans, []string{"r2"}) {
		t.Fatalf("b's channels %v", chans)
	}
}
