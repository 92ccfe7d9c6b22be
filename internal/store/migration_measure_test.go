//go:build measure

package store

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestClusterMigrationLossMeasure publishes numbered messages to one busy
// topic at MIG_RATE msg/s (default 2,000) while its slot is moved to
// another master, with a subscriber that subscribes again as soon as its
// subscription ends (as the node does), and reports which messages never
// arrived: what a migration loses from pub/sub alone, before the node
// fills it from history (issue 7).
//
//	go test -tags measure -run TestClusterMigrationLossMeasure -v ./internal/store/
func TestClusterMigrationLossMeasure(t *testing.T) {
	cs := startClusterStore(t)
	ctx := context.Background()
	rate := envN("MIG_RATE", 2000)
	const topic = "busy"
	var mu sync.Mutex
	got := map[int]bool{}
	on := func(m Message) {
		if m.Kind == ToChannel {
			n, _ := strconv.Atoi(m.Payload)
			mu.Lock()
			got[n] = true
			mu.Unlock()
		}
	}
	open := func() Subscription {
		for {
			s, err := cs.st.Subscribe(ctx, "n1", on)
			if err == nil {
				if err = s.Topics(ctx, topic); err == nil {
					return s
				}
				s.Close()
			}
			time.Sleep(50 * time.Millisecond) // the node's first backoff
		}
	}
	sub := open()
	var resubs atomic.Int64
	stop := make(chan struct{})
	var subWG sync.WaitGroup
	subWG.Add(1)
	go func() { // the node's subscriber loop
		defer subWG.Done()
		for {
			select {
			case <-sub.Done():
				sub.Close()
				sub = open()
				resubs.Add(1)
			case <-stop:
				sub.Close()
				return
			}
		}
	}()
	var sent atomic.Int64
	var pubErrs atomic.Int64
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if err := cs.st.PublishChannel(ctx, topic, []byte(strconv.Itoa(i))); err != nil {
				pubErrs.Add(1)
				continue
			}
			sent.Store(int64(i + 1))
		}
	}()
	time.Sleep(time.Second)
	slot := keySlot(cs.st.k.topicChannel(topic))
	from := cs.c.MasterOf(slot)
	to := cs.c.OtherMaster(from)
	moveAt := time.Now()
	cs.c.MoveSlot(slot, to)
	moveTook := time.Since(moveAt)
	time.Sleep(2 * time.Second)
	close(stop)
	<-pubDone
	subWG.Wait()
	n := int(sent.Load())
	mu.Lock()
	var lost []int
	for i := 0; i < n; i++ {
		if !got[i] {
			lost = append(lost, i)
		}
	}
	mu.Unlock()
	span := ""
	if len(lost) > 0 {
		span = " (numbers " + strconv.Itoa(lost[0]) + "–" + strconv.Itoa(lost[len(lost)-1]) + ")"
	}
	t.Logf("%d msg/s to one topic, slot %d moved in %v: %d published, %d publish errors, %d lost%s = %.0f ms of traffic, %d resubscriptions",
		rate, slot, moveTook.Round(time.Millisecond), n, pubErrs.Load(), len(lost), span, float64(len(lost))*1000/float64(rate), resubs.Load())
}
