package imserver

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/imbroker/imbroker/internal/store"
)

// workQueue is one subscriber worker's backlog: messages of the Redis
// channels hashed to it, in arrival order. It grows as needed instead of
// being a fixed channel buffer, so that a node holds memory for a backlog
// only while it has one (a channel of 2^18 messages would be scanned by
// every GC), and the worker takes everything waiting in one step.
type workQueue struct {
	mu    sync.Mutex
	items []store.Message // guarded by mu
	wake  chan struct{}   // a push onto an empty queue
}

// backlog is what all the workers hold, against Config's bounds.
type backlog struct {
	maxBytes int64 // payload bytes over every worker
	maxMsgs  int   // messages per worker
	bytes    atomic.Int64
	// behind counts the workers that took more than behindAfter messages
	// at once: the node is behind. A frame for an idle socket is then
	// queued for the socket's writer goroutine, which sends what piles up
	// with one write(2), instead of being written alone by the worker
	// (sockWriter.enqueue): a p2p backlog is many sockets' frames, one
	// each, that batching per socket serves at fewer writes. Runs
	// (enqueueRun) batch by themselves and ignore it.
	behind *atomic.Int32
}

// behindAfter is how many messages a worker takes at once before the node
// counts as behind.
const behindAfter = 32

// msgCost is what a queued message counts against the byte bound: its
// strings and the slot that holds it.
func msgCost(m store.Message) int64 { return int64(len(m.Payload) + len(m.Channel) + 40) }

func newWorkQueue() *workQueue { return &workQueue{wake: make(chan struct{}, 1)} }

// push queues m unless the backlog is full; always, for control messages.
// It never blocks (it runs in rueidis' reader).
func (q *workQueue) push(m store.Message, b *backlog, always bool) bool {
	cost := msgCost(m)
	if !always && b.bytes.Load()+cost > b.maxBytes {
		return false
	}
	q.mu.Lock()
	if !always && len(q.items) >= b.maxMsgs {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, m)
	first := len(q.items) == 1
	q.mu.Unlock()
	b.bytes.Add(cost)
	if first {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// spareMax is the largest batch slice a worker keeps for reuse; a larger
// one (a backlog that has drained) goes back to the GC.
const spareMax = 4096

// work handles the queue's messages in order until ctx ends. Consecutive
// channel messages of one channel (or broadcasts), which wait together when
// the node is behind, are handed over as one run, so that each socket gets
// them with one write (routeRun); anything else goes alone.
func (q *workQueue) work(ctx context.Context, b *backlog, handle func([]store.Message)) {
	var spare []store.Message
	isBehind := false
	defer func() {
		if isBehind {
			b.behind.Add(-1)
		}
	}()
	for {
		q.mu.Lock()
		batch := q.items
		q.items = spare
		q.mu.Unlock()
		if now := len(batch) > behindAfter; now != isBehind {
			isBehind = now
			if now {
				b.behind.Add(1)
			} else {
				b.behind.Add(-1)
			}
		}
		if len(batch) == 0 {
			spare = batch
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		for i := 0; i < len(batch); {
			j := i + 1
			if k := batch[i].Kind; k == store.ToChannel || k == store.ToBroadcast {
				for j < len(batch) && j-i < maxRun && batch[j].Kind == k && batch[j].Channel == batch[i].Channel {
					j++
				}
			}
			handle(batch[i:j])
			for _, m := range batch[i:j] {
				b.bytes.Add(-msgCost(m))
			}
			clear(batch[i:j])                       // let the payloads go
			if i/256 != j/256 && ctx.Err() != nil { // a node stopping drops its backlog
				return
			}
			i = j
		}
		spare = nil
		if cap(batch) <= spareMax {
			spare = batch[:0]
		}
	}
}

// maxRun bounds a run: the frames of one run go out in one write per
// socket, and a socket's queue bound still applies to them together.
const maxRun = 64
