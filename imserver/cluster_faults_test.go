package imserver_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/redistest"
)

// clusterFaultRun is a fault test on the Cluster: three node processes on
// this test's prefix, an imhelper that keeps every stream, n resumers in
// "room" and a round of traffic (one send to all of them, one channel
// message) every interval, already flowing.
func startClusterFaultRun(t *testing.T, prefix string, n int, every time.Duration) *faultRun {
	t.Helper()
	nodes := []string{prefix + "1", prefix + "2", prefix + "3"}
	f := &faultRun{c: startProcCluster(t)}
	for _, id := range nodes {
		f.procs = append(f.procs, f.c.startProc(id, "-lease-ttl", "5s", "-offline-grace", "10s"))
	}
	f.c.waitProcViews(f.procs...)
	f.im = procHelper(t, f.c, deliveryHistory, nodes...)
	f.events = f.c.consume("faults")
	f.rs, f.ids = startResumers(t, f.im, prefix, n, "room")
	f.tr = startTraffic(f.im, f.ids, "room", every)
	f.tr.waitRounds(t, 5)
	return f
}

// readiness polls every node's /readyz until stop, and records when each
// went unready and ready again.
type readiness struct {
	mu      sync.Mutex
	downAt  map[string]time.Time // first time seen unready
	upAfter map[string]time.Duration
	stop    chan struct{}
	done    chan struct{}
}

func watchReadiness(f *faultRun) *readiness {
	rd := &readiness{downAt: map[string]time.Time{}, upAfter: map[string]time.Duration{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(rd.done)
		client := &http.Client{Timeout: time.Second}
		for {
			select {
			case <-rd.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for _, p := range f.procs {
				resp, err := client.Get(p.admin + "/readyz")
				ready := err == nil && resp.StatusCode == http.StatusOK
				if err == nil {
					resp.Body.Close()
				}
				rd.mu.Lock()
				if at, down := rd.downAt[p.id]; !ready && !down {
					rd.downAt[p.id] = time.Now()
				} else if ready && down {
					if _, up := rd.upAfter[p.id]; !up {
						rd.upAfter[p.id] = time.Since(at)
					}
				}
				rd.mu.Unlock()
			}
		}
	}()
	return rd
}

func (rd *readiness) halt() map[string]time.Duration {
	close(rd.stop)
	<-rd.done
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.upAfter
}

// waitSweeps waits until every node has resubscribed since the fault
// (its resubscribe sweep counter passed the one read before it).
func waitSweeps(t testing.TB, procs []*nodeProc, before map[string]float64) {
	t.Helper()
	checkFor(t, 60*time.Second, func() error {
		for _, p := range procs {
			if k := p.metric(t, `im_stream_sweeps_total{why="resubscribe"}`); k <= before[p.id] {
				return fmt.Errorf("%s has not resubscribed yet", p.id)
			}
		}
		return nil
	})
}

func sweeps(t testing.TB, f *faultRun) map[string]float64 {
	out := map[string]float64{}
	for _, p := range f.procs {
		out[p.id] = p.metric(t, `im_stream_sweeps_total{why="resubscribe"}`)
	}
	return out
}

// noReconnects fails the test for every resumer whose socket was closed.
func noReconnects(t testing.TB, f *faultRun) {
	t.Helper()
	for _, r := range f.rs {
		if k := r.reconnects(); k != 0 {
			t.Errorf("%s reconnected %d times: the fault closed a socket", r.id, k)
		}
	}
}

// kill -9 the master that serves a node's channel while 1,000 clients get
// traffic: its replica is promoted, every node resubscribes on the new
// master, no socket is closed, every accepted message reaches every
// client once and in order, and /readyz goes false and true again.
func testClusterFailover(t *testing.T, rc *redistest.Cluster) {
	f := startClusterFaultRun(t, "fo", 1000, 100*time.Millisecond)
	before := sweeps(t, f)
	rd := watchReadiness(f)
	slot := rc.Slot(f.c.prefix + "n:" + f.procs[0].id)
	// Redis replicates asynchronously: what the master acknowledged last
	// may be missing on the replica it promotes, and a client whose
	// streams lost it is told recovered:false. Counted and reported.
	for _, r := range f.rs {
		r.lossTold.Store(true)
	}
	killAt := time.Now()
	f.tr.setFaulting(true) // until the replica serves the slots
	killed, promoted := rc.KillMaster(slot)
	// The sender's rueidis client learns of the new master on its own, a
	// moment after Redis has promoted it (its topology read each second, or
	// a command failing on the dead master); until then a send into the
	// slot can fail. Sends count as made after the promotion once it can
	// reach the slot.
	key := f.c.prefix + "n:" + f.procs[0].id
	checkFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		rc := f.im.Redis()
		if err := rc.Do(ctx, rc.B().Exists().Key(key).Build()).Error(); err != nil {
			return fmt.Errorf("imhelper cannot reach slot %d yet: %w", slot, err)
		}
		return nil
	})
	routed := time.Since(killAt)
	f.tr.setFaulting(false)        // every send from here on must be accepted and delivered
	waitSweeps(t, f.procs, before) // each node has a connection to every master
	resubscribed := time.Since(killAt)
	f.tr.waitRounds(t, 10)
	f.tr.finish(t, f.im, f.rs, "room")
	up := rd.halt()
	// A missing delivery of an accepted send is either told (its stream
	// got recovered:false) or silent: what the dead master acknowledged
	// and its replica never had, whose offsets the promoted replica hands
	// out again (docs/operations.md, failover). Reported, not failed:
	// Redis' asynchronous replication allows it.
	told, lostFailed, lostTold, lostSilent := 0, 0, 0, 0
	for _, r := range f.rs {
		r.mu.Lock()
		told += r.unrecovered
		for key, accepted := range f.tr.maybe {
			stream, _, _ := strings.Cut(key, "/")
			switch {
			case r.got[key] > 0:
			case !accepted:
				lostFailed++
			case r.told[stream]:
				lostTold++
			default:
				lostSilent++
			}
		}
		r.mu.Unlock()
	}
	noReconnects(t, f)
	for _, p := range f.procs {
		if _, ok := up[p.id]; !ok {
			t.Errorf("%s: /readyz never went false and true again", p.id)
		}
	}
	t.Logf("killed master %s (slot %d): replica promoted %v after the kill; imhelper reached it %v and every node resubscribed %v after the kill; unready for %v",
		killed.Addr, slot, promoted.Round(time.Millisecond), routed.Round(time.Millisecond), resubscribed.Round(time.Millisecond), up)
	failed := 0
	for _, accepted := range f.tr.maybe {
		if !accepted {
			failed++
		}
	}
	t.Logf("during the failover: %d sends made, %d of them failed; missing deliveries: %d of failed sends, %d of accepted ones on streams told recovered:false, %d of accepted ones silently (%d streams told recovered:false); every send after the promotion delivered",
		len(f.tr.maybe), failed, lostFailed, lostTold, lostSilent, told)
	keptEverything(t, f.im, f.events, f.ids, "room")
}

// Move the slots of a busy channel and of a node's channel to another
// master while messages flow: Redis ends those sharded subscriptions, each
// node subscribes again where the slots now live and fills its sockets
// from the streams; every accepted message reaches every client once.
func testClusterSlotMigration(t *testing.T, rc *redistest.Cluster) {
	f := startClusterFaultRun(t, "mg", 300, 50*time.Millisecond)
	for _, move := range []struct {
		key   string
		procs []*nodeProc // the nodes subscribed in that slot
	}{
		{f.c.prefix + "{c:room}", f.procs}, // every node has members in room
		{f.c.prefix + "n:" + f.procs[0].id, f.procs[:1]},
	} {
		key := move.key
		before := sweeps(t, f)
		slot := rc.Slot(key)
		from := rc.MasterOf(slot)
		start := time.Now()
		rc.MoveSlot(slot, rc.OtherMaster(from))
		moved := time.Since(start)
		waitSweeps(t, move.procs, before)
		t.Logf("%s: slot %d moved from %s in %v; every node resubscribed %v after the move began",
			key, slot, from.Addr, moved.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		f.tr.waitRounds(t, 10)
	}
	f.tr.finish(t, f.im, f.rs, "room")
	noReconnects(t, f)
	keptEverything(t, f.im, f.events, f.ids, "room")
}
