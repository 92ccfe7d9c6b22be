package imserver_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// TestDeliveryOverflow: a node whose subscriber queue holds one message
// drops what Redis pushes faster than it routes; with history on, every
// drop becomes a delay. The node fills each socket from its stream, so
// every client gets every message sent to it exactly once, in offset
// order, and is never told recovered:false.
func TestDeliveryOverflow(t *testing.T) {
	c := startProcCluster(t)
	p := c.startProc("o1", "-subscriber-queue", "1")
	c.waitProcViews(p)
	const receivers, senders, maxSends = 8, 16, 40000
	clients := make([]*wsClient, receivers)
	ids := make([]string, receivers)
	for i := range clients {
		ids[i] = fmt.Sprintf("ov-%d", i)
		clients[i] = c.connect(ids[i], "")
	}

	// Each receiver's reader checks its stream as frames arrive (a reader
	// that lagged would make the node close it as a slow consumer).
	type result struct {
		got  map[int]int // message number → copies received
		err  error
		last uint64
	}
	results := make([]result, receivers)
	var readers sync.WaitGroup
	for i, w := range clients {
		readers.Add(1)
		go func() {
			defer readers.Done()
			r := &results[i]
			r.got = make(map[int]int)
			for {
				var f frame
				select {
				case f = <-w.frames:
				case <-w.done:
					r.err = fmt.Errorf("%s closed", w.id)
					return
				}
				switch {
				case f.Type == "recovered":
					for _, s := range f.Streams {
						if !s.Recovered {
							r.err = fmt.Errorf("%s told recovered:false: %+v", w.id, f)
							return
						}
					}
					continue
				case f.Type != "message":
					r.err = fmt.Errorf("%s got %+v", w.id, f)
					return
				}
				var body struct {
					K   int  `json:"k"`
					End bool `json:"end"`
				}
				if err := json.Unmarshal(f.Data, &body); err != nil {
					r.err = err
					return
				}
				if f.Offset != r.last+1 && r.last != 0 {
					r.err = fmt.Errorf("%s: offset %d after %d", w.id, f.Offset, r.last)
					return
				}
				r.last = f.Offset
				if body.End {
					return
				}
				r.got[body.K]++
			}
		}()
	}

	// Send to every receiver at once (one PUBLISH for the node, one append
	// per receiver) from many goroutines until the node has dropped
	// messages from its subscription.
	var next atomic.Int64
	var sendErr atomic.Value
	var sentMu sync.Mutex
	sent := make(map[int]bool)
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1))
				if k > maxSends || (k%500 == 0 && k > 2000 && p.metric(t, "im_pubsub_overflow_total") > 0) {
					return
				}
				if _, err := c.helper.SendMessage(bg, "s", ids, fmt.Sprintf(`{"k":%d}`, k)); err != nil {
					sendErr.Store(err)
					return
				}
				sentMu.Lock()
				sent[k] = true
				sentMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err, _ := sendErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	overflow := p.metric(t, "im_pubsub_overflow_total")
	if overflow == 0 {
		t.Fatalf("the node never overflowed in %d sends; the test did not exercise the drop", len(sent))
	}
	if _, err := c.helper.SendMessage(bg, "s", ids, `{"end":true}`); err != nil {
		t.Fatal(err)
	}
	readers.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		for k, n := range r.got {
			if n != 1 || !sent[k] {
				t.Fatalf("%s got message %d %d times (sent: %v)", ids[i], k, n, sent[k])
			}
		}
		if len(r.got) != len(sent) {
			t.Fatalf("%s got %d of %d messages", ids[i], len(r.got), len(sent))
		}
		if r.last != uint64(len(sent)+1) {
			t.Fatalf("%s: the end marker at offset %d after %d messages", ids[i], r.last, len(sent))
		}
	}
	t.Logf("%d messages to each of %d receivers; %v dropped by the node and filled from history, %v replayed",
		len(sent), receivers, overflow, p.metric(t, "im_replayed_messages_total"))
}
