package imserver

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/imbroker/imbroker/internal/store"
)

// The backlog takes data up to its byte bound and drops past it, takes
// control messages always, and the worker handles what it took in order.
func TestWorkQueueBounds(t *testing.T) {
	msg := func(i int) store.Message {
		return store.Message{Kind: store.ToNode, Payload: strconv.Itoa(i) + "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
	}
	b := &backlog{maxBytes: 10 * msgCost(msg(0)), maxMsgs: 1 << 20}
	q := newWorkQueue()
	var took, dropped []int
	for i := range 20 {
		if q.push(msg(i), b, i == 15) {
			took = append(took, i)
		} else {
			dropped = append(dropped, i)
		}
	}
	// 0-9 fit; 15 is a control message, queued past the bound.
	if len(took) != 11 || took[9] != 9 || took[10] != 15 || len(dropped) != 9 {
		t.Fatalf("took %v, dropped %v", took, dropped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.work(ctx, b, func(m store.Message) {
			mu.Lock()
			got = append(got, m.Payload)
			n := len(got)
			mu.Unlock()
			if n == len(took) {
				cancel()
			}
		})
	}()
	<-done
	for i, p := range got {
		if p != msg(took[i]).Payload {
			t.Fatalf("handled %d: %q, want message %d", i, p, took[i])
		}
	}
	if n := b.bytes.Load(); n != 0 {
		t.Fatalf("backlog holds %d bytes after the worker took everything", n)
	}
	// The message bound per worker applies too.
	b2 := &backlog{maxBytes: 1 << 30, maxMsgs: 2}
	q2 := newWorkQueue()
	if !q2.push(msg(0), b2, false) || !q2.push(msg(1), b2, false) || q2.push(msg(2), b2, false) {
		t.Fatal("per-worker message bound not applied")
	}
}
