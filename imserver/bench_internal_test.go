package imserver

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Hub fan-out and queue benchmarks, run with:
//
//	go test ./imserver -run '^$' -bench 'Hub|Enqueue|HandleNode|HandleChannel' -benchmem
//
// Sockets are stubs whose writer is marked as running, so the benchmarks
// measure the hub walk and the enqueue (lock, bound check, append) without
// socket writes or writer goroutines.

var benchPayload = []byte(`{"k":1,"s":42,"t":1732340000123456789,"r":7,"p":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)

func benchServer() *Server {
	return &Server{cfg: Config{MaxQueueBytes: 1 << 40}, metrics: newMetrics(), hub: newHub()}
}

func benchConns(s *Server, n int, ch string) []*conn {
	conns := make([]*conn, n)
	for i := range conns {
		cn := &conn{srv: s, w: &sockWriter{metrics: s.metrics, maxQueue: s.cfg.MaxQueueBytes, live: true, writing: true}}
		c, _ := s.hub.add("client-"+strconv.Itoa(i), "", cn)
		if ch != "" {
			s.hub.join(c, []string{ch})
		}
		conns[i] = cn
	}
	return conns
}

func resetQueues(conns []*conn) {
	for _, cn := range conns {
		w := cn.w
		w.mu.Lock()
		clear(w.queue)
		w.queue = w.queue[:0]
		w.queued = 0
		w.mu.Unlock()
	}
}

// BenchmarkHubSendTopic fans one frame out to every local member of a
// channel; ns/delivery is the cost per socket.
func BenchmarkHubSendTopic(b *testing.B) {
	for _, members := range []int{1000, 10000} {
		b.Run("members="+strconv.Itoa(members), func(b *testing.B) {
			s := benchServer()
			conns := benchConns(s, members, "bench")
			f := wire.ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "bench", 1732340000000, benchPayload)
			of := outFrame{b: f, ts: wire.FrameTS(f)}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if n := s.hub.sendTopic("bench", wire.Position{}, of); n != members {
					b.Fatalf("delivered to %d of %d", n, members)
				}
				if i++; i%64 == 0 {
					b.StopTimer()
					resetQueues(conns)
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(members), "ns/delivery")
		})
	}
}

// BenchmarkHandleChannelMsg is what a node does with one channel message
// from Redis: validate, read ts, fan out.
func BenchmarkHandleChannelMsg(b *testing.B) {
	s := benchServer()
	conns := benchConns(s, 1000, "bench")
	payload := string(wire.ChannelFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", "bench", 1732340000000, benchPayload))
	m := store.Message{Kind: store.ToChannel, Channel: "bench", Payload: payload}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.route(m)
		if i++; i%64 == 0 {
			b.StopTimer()
			resetQueues(conns)
			b.StartTimer()
		}
	}
}

// BenchmarkHandleNodeMsgSend is the p2p path on the receiving node: decode
// the node message and queue the frame for one local receiver.
func BenchmarkHandleNodeMsgSend(b *testing.B) {
	s := benchServer()
	s.cfg.NodeID = "n1"
	conns := benchConns(s, 1000, "")
	f := wire.MessageFrame("01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", "alice", nil, 1732340000000, benchPayload)
	msg := string(wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindSend, ID: "01JD3Y5M2X8Q4R7T9V1W3Y5Z7A", To: []string{"client-7"}}, f))
	m := store.Message{Kind: store.ToNode, Payload: msg}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.route(m)
		if i++; i%4096 == 0 {
			b.StopTimer()
			resetQueues(conns)
			b.StartTimer()
		}
	}
}

// BenchmarkHandleNodeMsgBatch is the same path for a batch of 16 sends,
// each to one local receiver: ns/send and allocs/send against
// BenchmarkHandleNodeMsgSend are what a carried send costs the node.
func BenchmarkHandleNodeMsgBatch(b *testing.B) {
	s := benchServer()
	s.cfg.NodeID = "n1"
	conns := benchConns(s, 1000, "")
	const sends = 16
	batch := make([]wire.BatchSend, sends)
	for i := range batch {
		id := wire.NewID(time.UnixMilli(1732340000000))
		batch[i] = wire.BatchSend{Header: wire.NodeMsg{Kind: wire.KindSend, ID: id, To: []string{"client-" + strconv.Itoa(i*7)}},
			Frame: wire.MessageFrame(id, "alice", nil, 1732340000000, benchPayload)}
	}
	m := store.Message{Kind: store.ToNode, Payload: string(wire.EncodeBatch(0, batch))}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.route(m)
		if i++; i%256 == 0 {
			b.StopTimer()
			resetQueues(conns)
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*sends), "ns/send")
}

// BenchmarkConnEnqueue is one frame onto one socket's queue.
func BenchmarkConnEnqueue(b *testing.B) {
	s := benchServer()
	conns := benchConns(s, 1, "")
	of := outFrame{b: benchPayload}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		conns[0].enqueue(of)
		if i++; i%4096 == 0 {
			b.StopTimer()
			resetQueues(conns)
			b.StartTimer()
		}
	}
}

// BenchmarkStartGoroutine compares a tracked goroutine start (what every
// writer, close and ping costs) with a plain go statement.
func BenchmarkStartGoroutineTracked(b *testing.B) {
	s := &Server{}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			wg.Add(1)
			s.startGoroutine(wg.Done)
		}
	})
	wg.Wait()
	s.stopGoroutines()
}

func BenchmarkStartGoroutinePlain(b *testing.B) {
	var wg sync.WaitGroup
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			wg.Add(1)
			go wg.Done()
		}
	})
	wg.Wait()
}
