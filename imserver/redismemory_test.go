package imserver_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

// What Redis running out of memory does to the broker, under the two
// policies that keep broker state (noeviction, and volatile-lru, the
// default of several managed offerings). Junk without a TTL fills Redis
// until it refuses writes; under volatile-lru Redis first evicts every key
// with a TTL on the way there. Through all of it:
//   - no live node is reaped (no node_lost event) and imhelper keeps
//     seeing both nodes, although their leases must be refreshed at OOM;
//   - direct and channel messages are delivered; every node stays ready;
//   - new connections are refused with a clear error (ErrRedisFull from
//     PrevConnectServer), and im_redis_full says why;
//   - once room is made, connecting works again and nothing was lost.
func TestRedisAtMaxmemory(t *testing.T) {
	for _, policy := range []string{"noeviction", "volatile-lru"} {
		t.Run(policy, func(t *testing.T) { testRedisAtMaxmemory(t, policy) })
	}
}

func testRedisAtMaxmemory(t *testing.T, policy string) {
	rs := redistest.StartWith(t, "--maxmemory-policy", policy)
	c := startClusterOn(t, rs, 0, nil)
	// A short lease: several lapse while Redis is full unless refreshed.
	procs := []*nodeProc{c.startProc("m1", "-lease-ttl", "2s"), c.startProc("m2", "-lease-ttl", "2s")}
	c.waitProcViews(procs...)
	events := c.consume("ops")
	const n = 60
	var clients []*wsClient
	for i := range n {
		id := fmt.Sprintf("mm-%d", i)
		clients = append(clients, c.connect(id, ""))
		if err := c.helper.JoinChan(bg, id, "hall"); err != nil {
			t.Fatal(err)
		}
	}
	c.barrier(clients...)

	fill(t, rs)
	waitMetric(t, procs, "im_redis_full", 1)
	// Both leases get refreshed past what they were when Redis filled up:
	// more than a lease TTL passes with Redis refusing writes.
	before := leaseExpiries(t, rs, "m1", "m2")
	checkFor(t, 20*time.Second, func() error {
		now := leaseExpiries(t, rs, "m1", "m2")
		for id, exp := range before {
			if now[id] <= exp+int64(2*time.Second/time.Millisecond) {
				return fmt.Errorf("lease of %s at %d, was %d when Redis filled up", id, now[id], exp)
			}
		}
		return nil
	})
	if err := c.helper.RefreshNodes(bg); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.helper.Nodes()); got != "[m1 m2]" {
		t.Fatalf("imhelper sees %s while Redis is full", got)
	}
	for _, p := range procs {
		if code, body := getJSON(t, p.admin+"/readyz"); code != 200 {
			t.Errorf("%s not ready while Redis is full: %d %s", p.id, code, body)
		}
	}
	// Delivery goes on: PUBLISH needs no memory.
	if _, err := c.helper.SendMessage(bg, "test", []string{clients[0].id}, `"direct while full"`); err != nil {
		t.Fatalf("SendMessage while full: %v", err)
	}
	// (Under volatile-lru Redis may have evicted the stream's meta: the
	// client is then told recovered:false first.)
	if f := clients[0].nextData(t); string(f.Data) != `"direct while full"` {
		t.Fatalf("got %+v", f)
	}
	if _, err := c.helper.SendChanMessage(bg, "test", "hall", `"hall while full"`); err != nil {
		t.Fatalf("SendChanMessage while full: %v", err)
	}
	for _, w := range clients {
		if f := w.nextData(t); string(f.Data) != `"hall while full"` {
			t.Fatalf("%s got %+v", w.id, f)
		}
	}
	// New connections are refused, saying why.
	_, err := c.helper.PrevConnectServer(bg, "newcomer", "")
	if !errors.Is(err, imhelper.ErrRedisFull) {
		t.Fatalf("PrevConnectServer while full: %v, want ErrRedisFull", err)
	}

	unfill(t, rs)
	waitMetric(t, procs, "im_redis_full", 0)
	late := c.connect("newcomer", "")
	if err := c.helper.JoinChan(bg, late.id, "hall"); err != nil {
		t.Fatal(err)
	}
	clients = append(clients, late)
	c.barrier(clients...)
	if _, err := c.helper.SendChanMessage(bg, "test", "hall", `"after"`); err != nil {
		t.Fatal(err)
	}
	for _, w := range clients {
		if f := w.nextData(t); string(f.Data) != `"after"` {
			t.Fatalf("%s got %+v", w.id, f)
		}
	}
	if members, _ := c.helper.GetChanClientList(bg, "hall"); len(members) != n+1 {
		t.Errorf("hall has %d members, want %d", len(members), n+1)
	}
	if k := events.count("offline", wire.ReasonNodeLost); k != 0 {
		t.Errorf("%d node_lost events: live nodes were reaped", k)
	}
	out, _ := rs.Exec("INFO", "stats")
	_, rest, _ := strings.Cut(out, "evicted_keys:")
	evicted, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]))
	t.Logf("%d keys evicted", evicted)
	if policy == "volatile-lru" && evicted == 0 {
		t.Errorf("nothing was evicted under volatile-lru: the test did not test eviction")
	}
}

// waitMetric waits until every node process reports name = want.
func waitMetric(t *testing.T, procs []*nodeProc, name string, want float64) {
	t.Helper()
	for _, p := range procs {
		checkFor(t, 10*time.Second, func() error {
			if v := p.metric(t, name); v != want {
				return fmt.Errorf("%s %s = %v, want %v", p.id, name, v, want)
			}
			return nil
		})
	}
}

// fill writes 8 MB of junk without a TTL, then sets maxmemory 2 MB below
// what Redis uses: from then on Redis refuses every write that may grow
// memory, after evicting what its policy allows. (Filling up to a fixed
// limit instead leaves Redis at the border, where small writes pass.)
func fill(t *testing.T, rs *redistest.Server) {
	t.Helper()
	rc := rawClient(t, rs)
	val := strings.Repeat("x", 256<<10)
	for i := range 32 {
		if err := rc.Do(bg, rc.B().Set().Key("junk:"+strconv.Itoa(i)).Value(val).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	info, err := rc.Do(bg, rc.B().Info().Section("memory").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(info, "used_memory:")
	used, err := strconv.ParseInt(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(bg, rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", strconv.FormatInt(used-2<<20, 10)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(bg, rc.B().Set().Key("probe").Value("x").Build()).Error(); err == nil || !strings.HasPrefix(err.Error(), "OOM") {
		t.Fatalf("Redis still takes writes: %v", err)
	}
}

func unfill(t *testing.T, rs *redistest.Server) {
	t.Helper()
	rc := rawClient(t, rs)
	keys, err := rc.Do(bg, rc.B().Keys().Pattern("junk:*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if err := rc.Do(bg, rc.B().Del().Key(k).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}

func rawClient(t *testing.T, rs *redistest.Server) rueidis.Client {
	t.Helper()
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{rs.Addr}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	return rc
}

// leaseExpiries reads the "exp" of each node's lease.
func leaseExpiries(t *testing.T, rs *redistest.Server, ids ...string) map[string]int64 {
	t.Helper()
	rc := rawClient(t, rs)
	out := map[string]int64{}
	for _, id := range ids {
		s, err := rc.Do(bg, rc.B().Get().Key("im:node:"+id).Build()).ToString()
		if err != nil {
			t.Fatalf("lease of %s: %v", id, err)
		}
		var ni wire.NodeInfo
		if err := json.Unmarshal([]byte(s), &ni); err != nil {
			t.Fatal(err)
		}
		out[id] = ni.Expires
	}
	return out
}

// A Redis whose policy may evict presence and membership (allkeys-*, with a
// limit) makes every node report not ready, say why on a metric, and log
// it; a safe policy makes them ready again.
func TestUnsafeEvictionPolicy(t *testing.T) {
	c := startCluster(t, 0, nil)
	p := c.startProc("u1")
	for _, cmd := range [][]string{{"CONFIG", "SET", "maxmemory", "512mb"}, {"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"}} {
		if out, err := c.redis.Exec(cmd...); err != nil {
			t.Fatal(out, err)
		}
	}
	checkFor(t, 15*time.Second, func() error {
		code, body := getJSON(t, p.admin+"/readyz")
		if v := p.metric(t, "im_redis_eviction_unsafe"); code != 503 || v != 1 {
			return fmt.Errorf("/readyz %d %s, im_redis_eviction_unsafe %v", code, body, v)
		}
		return nil
	})
	if !strings.Contains(p.logText(), "maxmemory-policy can evict") {
		t.Errorf("nothing logged:\n%s", p.logText())
	}
	if out, err := c.redis.Exec("CONFIG", "SET", "maxmemory-policy", "volatile-lru"); err != nil {
		t.Fatal(out, err)
	}
	checkFor(t, 15*time.Second, func() error {
		if code, body := getJSON(t, p.admin+"/readyz"); code != 200 {
			return fmt.Errorf("/readyz %d %s under volatile-lru", code, body)
		}
		return nil
	})
}

// A resync that writes a lost client back must never end with Redis
// knowing the client but not its channels: the next resync would take
// Redis' empty list as the truth and drop the membership from memory too.
// Redis loses everything (FLUSHALL) while an ACL makes the channels' member
// sets read-only, so the write-back of the client's channels fails; once
// the ACL is lifted, the client must be back in its channel's member set.
func TestResyncNeverDropsMembership(t *testing.T) {
	c := startCluster(t, 1, nil)
	w := c.connect("keeper", "")
	if err := c.helper.JoinChan(bg, "keeper", "room"); err != nil {
		t.Fatal(err)
	}
	c.barrier(w)
	acl := func(rules ...string) {
		t.Helper()
		if out, err := c.redis.Exec(append([]string{"ACL", "SETUSER", "default"}, rules...)...); err != nil || strings.TrimSpace(out) != "OK" {
			t.Fatalf("ACL SETUSER %v: %s %v", rules, out, err)
		}
	}
	// Everything readable; writable: all but the channels' member sets and
	// index. (A script needs write access to every key it declares, so the
	// client's own channel set stays writable for online.lua.)
	acl("resetkeys", "%R~*", "~im:online", "~im:node*", "~im:client*", "~im:events*", "~im:token:*", "~im:reap:*", "~im:memprobe:*")
	t.Cleanup(func() { _, _ = c.redis.Exec("ACL", "SETUSER", "default", "allkeys") })
	if out, err := c.redis.Exec("FLUSHALL"); err != nil {
		t.Fatal(out, err)
	}
	// Wait for the node's resync to have tried to write the channels back
	// and been refused.
	checkFor(t, 20*time.Second, func() error {
		out, _ := c.redis.Exec("INFO", "errorstats")
		if !strings.Contains(out, "errorstat_NOPERM") {
			return fmt.Errorf("no NOPERM yet: %s", out)
		}
		return nil
	})
	acl("allkeys")
	checkFor(t, 20*time.Second, func() error {
		members, err := c.helper.GetChanClientList(bg, "room")
		if err != nil || fmt.Sprint(members) != "[keeper]" {
			return fmt.Errorf("room members %v %v", members, err)
		}
		return nil
	})
	if _, err := c.helper.SendChanMessage(bg, "test", "room", `"still here"`); err != nil {
		t.Fatal(err)
	}
	if f := w.next(t); f.Channel != "room" || string(f.Data) != `"still here"` {
		t.Fatalf("got %+v", f)
	}
}

// After kill -9 of a node, its clients reconnect to a survivor at once:
// Redis closed the dead node's subscription, and imhelper and the
// survivors route around a node nobody listens for, although its lease
// (60 s here) has not lapsed.
func TestKilledNodeLeavesRoutingAtOnce(t *testing.T) {
	c := startProcCluster(t)
	procs := []*nodeProc{c.startProc("r1", "-lease-ttl", "60s"), c.startProc("r2", "-lease-ttl", "60s")}
	c.waitProcViews(procs...)
	var victims []*wsClient
	for i := 0; len(victims) < 20; i++ {
		if id := fmt.Sprintf("v-%d", i); c.helper.Owner(id) == "r2" {
			victims = append(victims, c.connect(id, ""))
		}
	}
	killed := time.Now()
	_ = procs[1].cmd.Process.Kill()
	procs[1].waitExit(t, 10*time.Second)
	var took time.Duration
	for _, v := range victims {
		<-v.done
		// What a client does: ask for a URL and dial it, with backoff.
		var w *wsClient
		checkFor(t, 20*time.Second, func() error {
			var err error
			w, err = c.tryConnect(v.id, "")
			return err
		})
		if !strings.HasPrefix(w.url, procs[0].url) {
			t.Fatalf("%s reconnected to %s", v.id, w.url)
		}
		took = time.Since(killed)
		// Presence still names r2 until it is reaped: wait for r1's attach.
		checkFor(t, 10*time.Second, func() error {
			if node, err := c.helper.OnlineNode(bg, v.id); node != "r1" {
				return fmt.Errorf("%s online on %q (%v)", v.id, node, err)
			}
			return nil
		})
		if _, err := c.helper.SendMessage(bg, "test", []string{v.id}, `"found you"`); err != nil {
			t.Fatal(err)
		}
		if f := w.next(t); string(f.Data) != `"found you"` {
			t.Fatalf("%s got %+v", v.id, f)
		}
	}
	t.Logf("%d clients of a killed node reconnected to the survivor within %v of kill -9 (lease 60 s)", len(victims), took.Round(time.Millisecond))
	// The lease is still live: routing did not wait for it.
	exp := leaseExpiries(t, c.redis, "r2")["r2"]
	if now := time.Now().UnixMilli(); exp < now {
		t.Fatalf("r2's lease lapsed (%d < %d): the test proves nothing", exp, now)
	}
}
