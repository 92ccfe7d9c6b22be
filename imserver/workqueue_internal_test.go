package imserver

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imbroker/imbroker/internal/store"
)

// The backlog takes data up to its byte bound and drops past it, takes
// control messages always, and the worker handles what it took in order.
func TestWorkQueueBounds(t *testing.T) {
	msg := func(i int) store.Message {
		return store.Message{Kind: store.ToNode, Payload: strconv.Itoa(i) + "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}
	}
	b := &backlog{maxBytes: 10 * msgCost(msg(0)), maxMsgs: 1 << 20, behind: new(atomic.Int32)}
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
		q.work(ctx, b, func(run []store.Message) {
			if len(run) != 1 {
				t.Errorf("node messages handed over %d at a time", len(run))
			}
			mu.Lock()
			got = append(got, run[0].Payload)
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
	b2 := &backlog{maxBytes: 1 << 30, maxMsgs: 2, behind: new(atomic.Int32)}
	q2 := newWorkQueue()
	if !q2.push(msg(0), b2, false) || !q2.push(msg(1), b2, false) || q2.push(msg(2), b2, false) {
		t.Fatal("per-worker message bound not applied")
	}
}

// Consecutive messages of one channel that waited together are handed
// over as one run; a message of another channel or kind ends the run.
func TestWorkQueueRuns(t *testing.T) {
	b := &backlog{maxBytes: 1 << 30, maxMsgs: 1 << 20, behind: new(atomic.Int32)}
	q := newWorkQueue()
	msgs := []store.Message{
		{Kind: store.ToChannel, Channel: "a", Payload: "1"},
		{Kind: store.ToChannel, Channel: "a", Payload: "2"},
		{Kind: store.ToChannel, Channel: "a", Payload: "3"},
		{Kind: store.ToChannel, Channel: "b", Payload: "4"},
		{Kind: store.ToNode, Payload: "5"},
		{Kind: store.ToNode, Payload: "6"},
		{Kind: store.ToBroadcast, Payload: "7"},
		{Kind: store.ToBroadcast, Payload: "8"},
	}
	for _, m := range msgs {
		q.push(m, b, false)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var runs []string
	q.work(ctx, b, func(run []store.Message) {
		s := ""
		for _, m := range run {
			s += m.Payload
		}
		runs = append(runs, s)
		if len(runs) == 5 {
			cancel()
		}
	})
	if got := strings.Join(runs, " "); got != "123 4 5 6 78" {
		t.Fatalf("runs %q, want \"123 4 5 6 78\"", got)
	}
}
