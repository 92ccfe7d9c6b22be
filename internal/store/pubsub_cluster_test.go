package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

func TestParseClusterURL(t *testing.T) {
	opt, cluster, err := parseURL("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002?dial_timeout=3s")
	if err != nil || !cluster {
		t.Fatalf("parse: %v cluster=%v", err, cluster)
	}
	if got := strings.Join(opt.InitAddress, " "); got != "10.0.0.1:7000 10.0.0.2:7001 10.0.0.3:7002" {
		t.Errorf("seeds %q", got)
	}
	if opt.Username != "u" || opt.Password != "p@ss" || opt.Dialer.Timeout != 3*time.Second {
		t.Errorf("user %q password %q dial timeout %v", opt.Username, opt.Password, opt.Dialer.Timeout)
	}
	opt, cluster, err = parseURL("rediss+cluster://h1:7000,h2:7001")
	if err != nil || !cluster || opt.TLSConfig == nil || len(opt.InitAddress) != 2 {
		t.Fatalf("rediss+cluster: %v cluster=%v tls=%v seeds=%v", err, cluster, opt.TLSConfig != nil, opt.InitAddress)
	}
	if _, cluster, err = parseURL("redis://h1:6379/0"); err != nil || cluster {
		t.Fatalf("plain url: %v cluster=%v", err, cluster)
	}
	for _, bad := range []string{"redis+cluster://h1:7000,,h2:7001", "redis+cluster://", "foo+cluster://h:1"} {
		if err := CheckURL(bad); err == nil {
			t.Errorf("CheckURL(%q) accepted it", bad)
		}
	}
}

// A redis+cluster:// URL to a Redis that is not a Cluster is refused with
// a clear error rather than run as a single server.
func TestClusterURLToStandaloneRefused(t *testing.T) {
	r := redistest.Start(t)
	rc, err := Dial("redis+cluster://" + r.Addr)
	if err == nil {
		rc.Close()
		t.Fatal("dialled a standalone Redis as a Cluster")
	}
	if !strings.Contains(err.Error(), "not a Redis Cluster") {
		t.Fatalf("unclear error: %v", err)
	}
}

// clusterStore is a store on a real Cluster and what its test needs.
type clusterStore struct {
	c  *redistest.Cluster
	rc rueidis.Client
	st *Redis
}

func startClusterStore(t *testing.T) *clusterStore {
	t.Helper()
	c := redistest.StartCluster(t)
	rc, err := Dial(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	if rc.Mode() != rueidis.ClientModeCluster {
		t.Fatalf("mode %s", rc.Mode())
	}
	return &clusterStore{c: c, rc: rc, st: NewRedis(rc, Options{})}
}

// inbox collects what a subscription receives.
type inbox struct {
	mu   sync.Mutex
	got  map[string]int // "kind channel payload" → count
	cond chan struct{}
}

func newInbox() *inbox { return &inbox{got: map[string]int{}, cond: make(chan struct{}, 1)} }

func (b *inbox) on(m Message) {
	b.mu.Lock()
	b.got[fmt.Sprint(m.Kind, " ", m.Channel, " ", m.Payload)]++
	b.mu.Unlock()
	select {
	case b.cond <- struct{}{}:
	default:
	}
}

// wait waits until every key has arrived exactly once and nothing else has.
func (b *inbox) wait(t *testing.T, keys []string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		b.mu.Lock()
		ok := len(b.got) == len(keys)
		for _, k := range keys {
			if b.got[k] > 1 {
				b.mu.Unlock()
				t.Fatalf("%q arrived %d times", k, b.got[k])
			}
			ok = ok && b.got[k] == 1
		}
		b.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-b.cond:
		case <-deadline:
			b.mu.Lock()
			defer b.mu.Unlock()
			t.Fatalf("after 30s got %d of %d: %v", len(b.got), len(keys), b.got)
		}
	}
}

func (b *inbox) reset() {
	b.mu.Lock()
	b.got = map[string]int{}
	b.mu.Unlock()
}

// publishAll publishes one node message, one broadcast and one message on
// each topic, tagged with round, and returns what the subscription of
// node n1 should receive.
func (cs *clusterStore) publishAll(t *testing.T, topics []string, round string) []string {
	t.Helper()
	ctx := context.Background()
	want := []string{fmt.Sprint(ToNode, "  node-", round), fmt.Sprint(ToBroadcast, "  bcast-", round)}
	if err := cs.st.PublishNodes(ctx, NodeMessage{Node: "n1", Msg: []byte("node-" + round)}, NodeMessage{Node: "n2", Msg: []byte("other-" + round)}); err != nil {
		t.Fatal(err)
	}
	if err := cs.st.PublishBroadcast(ctx, []byte("bcast-"+round)); err != nil {
		t.Fatal(err)
	}
	for _, ch := range topics {
		if err := cs.st.PublishChannel(ctx, ch, []byte(ch+"-"+round)); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprint(ToChannel, " ", ch, " ", ch+"-"+round))
	}
	return want
}

// spublishCalls sums cmdstat_spublish and cmdstat_publish over the masters.
func (cs *clusterStore) publishCalls(t *testing.T) (spub, pub int) {
	t.Helper()
	for _, m := range cs.c.Masters() {
		out, err := m.Exec("info", "commandstats")
		if err != nil {
			t.Fatal(err)
		}
		spub += statCalls(out, "cmdstat_spublish:")
		pub += statCalls(out, "cmdstat_publish:")
	}
	return spub, pub
}

func statCalls(info, prefix string) int {
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
			v, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// pubsubClients counts each master's pub/sub connections.
func (cs *clusterStore) pubsubClients(t *testing.T) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, m := range cs.c.Masters() {
		out, err := m.Exec("client", "list", "type", "pubsub")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.TrimSpace(line) != "" {
				n[m.Addr]++
			}
		}
	}
	return n
}

// resubscribe opens the subscription again until the Cluster lets it, as
// the node's subscriber does with backoff.
func (cs *clusterStore) resubscribe(t *testing.T, b *inbox, topics []string) Subscription {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sub, err := cs.st.Subscribe(ctx, "n1", b.on)
		if err == nil {
			err = sub.Topics(ctx, topics...)
			if err != nil {
				sub.Close()
			}
		}
		cancel()
		if err == nil {
			return sub
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not subscribe again: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitDone waits for the subscription to report its end.
func waitDone(t *testing.T, sub Subscription, what string) error {
	t.Helper()
	select {
	case err := <-sub.Done():
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the subscription stayed silent", what)
	}
	return nil
}

// Sharded pub/sub on a real Cluster: our slot hash is Redis', every kind
// of message arrives exactly once over one connection per master, each
// message costs one SPUBLISH and no PUBLISH, probes cover every master,
// and a slot migration and a master's failover each end the subscription
// (never a silent loss of channels), after which a new one delivers again.
func TestClusterShardedPubSub(t *testing.T) {
	cs := startClusterStore(t)
	ctx := context.Background()

	for i := range 200 {
		name := fmt.Sprintf("im:c:room-%d", i)
		if i%3 == 0 {
			name = fmt.Sprintf("im:hist:{u:c%d}:meta", i)
		}
		if got, want := keySlot(name), cs.c.Slot(name); got != want {
			t.Fatalf("keySlot(%q) = %d, Redis says %d", name, got, want)
		}
	}

	var topics []string
	for i := range 40 {
		topics = append(topics, "room-"+strconv.Itoa(i))
	}
	b := newInbox()
	sub, err := cs.st.Subscribe(ctx, "n1", b.on)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sub.Close() }()
	if err := sub.Topics(ctx, topics...); err != nil {
		t.Fatal(err)
	}
	clients := cs.pubsubClients(t)
	for addr, n := range clients {
		if n != 1 {
			t.Errorf("master %s has %d pub/sub connections, want 1", addr, n)
		}
	}
	spub0, pub0 := cs.publishCalls(t)
	// The load tool's per-master reading agrees with redis-cli's.
	ms, err := cs.st.MasterStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slots, spubs := 0, 0
	for _, m := range ms {
		slots += m.Slots
		spubs += int(m.Calls["spublish"])
		if m.Subscribers != clients[m.Addr] {
			t.Errorf("MasterStats: %s has %d subscriber connections, CLIENT LIST says %d", m.Addr, m.Subscribers, clients[m.Addr])
		}
	}
	if len(ms) != len(cs.c.Masters()) || slots != clusterSlots || spubs != spub0 {
		t.Errorf("MasterStats: %d masters, %d slots, %d SPUBLISH; want %d, %d, %d", len(ms), slots, spubs, len(cs.c.Masters()), clusterSlots, spub0)
	}
	b.wait(t, cs.publishAll(t, topics, "1"))
	spub, pub := cs.publishCalls(t)
	if want := 2 + 1 + len(topics); spub-spub0 != want || pub != pub0 {
		t.Errorf("SPUBLISH %d (want %d), PUBLISH %d for the round", spub-spub0, want, pub-pub0)
	}
	for range 5 {
		if err := sub.Probe(ctx); err != nil {
			t.Fatalf("probe on a healthy cluster: %v", err)
		}
	}
	if err := sub.Untopic(ctx, topics[0]); err != nil {
		t.Fatal(err)
	}
	b.reset()
	want := cs.publishAll(t, topics, "2")
	b.wait(t, append(want[:2:2], want[3:]...)) // room-0 left: not received
	select {
	case err := <-sub.Done():
		t.Fatalf("our own unsubscribe ended the subscription: %v", err)
	default:
	}

	// Migration: move a busy topic's slot elsewhere.
	moved := topics[1]
	slot := keySlot(cs.st.k.topicChannel(moved))
	from := cs.c.MasterOf(slot)
	to := cs.c.OtherMaster(from)
	start := time.Now()
	cs.c.MoveSlot(slot, to)
	err = waitDone(t, sub, "slot migration")
	if !errors.Is(err, ErrShardMoved) {
		t.Fatalf("after the migration: %v, want ErrShardMoved", err)
	}
	t.Logf("migration of slot %d (%s) reported after %v: %v", slot, moved, time.Since(start), err)
	sub.Close()
	sub = cs.resubscribe(t, b, topics)
	b.reset()
	b.wait(t, cs.publishAll(t, topics, "3"))

	// Failover: kill the master of the node channel's slot.
	nodeSlot := keySlot(cs.st.k.nodeChannel("n1"))
	killedAt := time.Now()
	killed := cs.c.MasterOf(nodeSlot)
	_, promoted := cs.c.KillMaster(nodeSlot)
	err = waitDone(t, sub, "failover") // buffered: it was delivered at the kill
	t.Logf("kill of %s reported after at most %v (%v); slot served again after %v", killed.Addr, time.Since(killedAt), err, promoted)
	sub.Close()
	resubAt := time.Now()
	sub = cs.resubscribe(t, b, topics)
	t.Logf("resubscribed %v after the promotion", time.Since(resubAt))
	b.reset()
	b.wait(t, cs.publishAll(t, topics, "4"))
}

// A shard connection that silently stops delivering (its probe channel
// dropped behind the subscription's back) fails the subscription after
// probeMisses probes.
func TestClusterProbeCatchesSilentShard(t *testing.T) {
	cs := startClusterStore(t)
	ctx := context.Background()
	sub, err := cs.st.Subscribe(ctx, "n1", func(Message) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	s := sub.(*clusterSub)
	var victim *shardConn
	s.mu.Lock()
	for _, sc := range s.shards {
		victim = sc
		break
	}
	s.leaving[victim.probe] = true // as if Redis had dropped it unannounced
	s.mu.Unlock()
	if err := victim.dc.Do(ctx, victim.dc.B().Sunsubscribe().Channel(victim.probe).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	var probeErr error
	for i := 0; i < 20 && probeErr == nil; i++ {
		probeErr = sub.Probe(ctx)
		// Wait for the healthy shards' probes to come back, so that
		// only the silent one can fall behind.
		deadline := time.Now().Add(10 * time.Second)
		s.mu.Lock()
		shards := maps.Clone(s.shards)
		s.mu.Unlock()
		for _, sc := range shards {
			for sc != victim && sc.seen.Load() < sc.sent.Load() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	if !errors.Is(probeErr, ErrShardMoved) || !strings.Contains(probeErr.Error(), victim.addr) {
		t.Fatalf("probe error %v, want one naming %s", probeErr, victim.addr)
	}
	if err := waitDone(t, sub, "silent shard"); !errors.Is(err, ErrShardMoved) {
		t.Fatalf("done with %v", err)
	}
}

// The registry on a Cluster: its keys share a slot, leases are written and
// read there with that master's clock, and a node counts as listening by
// the sharded subscribers of its channel (a plain PUBSUB NUMSUB sees none
// on a Cluster, and would route around every node).
func TestClusterRegistry(t *testing.T) {
	cs := startClusterStore(t)
	ctx := context.Background()
	k := cs.st.k
	for _, key := range []string{k.nodeKey("n1"), k.nodeKey("other"), k.reapLock("n1")} {
		if got, want := cs.c.Slot(key), cs.c.Slot(k.nodeSet()); got != want {
			t.Fatalf("%s is on slot %d, the node set on %d", key, got, want)
		}
	}
	for _, id := range []string{"n1", "n2"} {
		if _, err := cs.st.WriteLease(ctx, wire.NodeInfo{ID: id, URL: "ws://" + id + ".invalid/ws"}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.st.WriteLease(ctx, wire.NodeInfo{ID: "n3", URL: "ws://n3.invalid/ws"}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	sub, err := cs.st.Subscribe(ctx, "n1", func(Message) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	waitUntil(t, func() error {
		live, dead, err := cs.st.Nodes(ctx)
		if err != nil {
			return err
		}
		if len(live) != 1 || live[0].ID != "n1" || strings.Join(dead, ",") != "n3" {
			return fmt.Errorf("live %v dead %v, want n1 live (n2 has no subscriber) and n3 dead", live, dead)
		}
		return nil
	})
	if ok, err := cs.st.ClaimReap(ctx, "n3", "n1", time.Minute); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if ok, err := cs.st.ClaimReap(ctx, "n3", "n2", time.Minute); err != nil || ok {
		t.Fatalf("second claim: %v %v", ok, err)
	}
	if err := cs.st.ReleaseReap(ctx, "n3"); err != nil {
		t.Fatal(err)
	}
	if err := cs.st.DeleteLease(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if live, _, err := cs.st.Nodes(ctx); err != nil || len(live) != 0 {
		t.Fatalf("after n1's delete: live %v, %v", live, err)
	}
}

// waitUntil polls fn until it returns nil, for up to 30 s.
func waitUntil(t *testing.T, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
